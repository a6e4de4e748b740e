// Renders the maths of pymdownx.arithmatex (generic mode) with the bundled KaTeX: no network.
// Each .arithmatex element holds \( ... \) (inline) or \[ ... \] (display).
function renderArithmatex(root) {
  for (const el of root.querySelectorAll(".arithmatex")) {
    const tex = el.textContent.trim();
    if (!tex.startsWith("\\(") && !tex.startsWith("\\[")) continue; // already rendered
    katex.render(tex.slice(2, -2), el, {
      displayMode: tex.startsWith("\\["),
      throwOnError: false,
    });
  }
}

document$.subscribe(() => renderArithmatex(document));

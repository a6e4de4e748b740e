"""Int64 flags shared by two threads: a spin-wait that does not hold the GIL, and a swap.

:mod:`npmobilenet.threads` hands a job to a worker thread, and its end back, through flags. A
thread waiting for a flag first spins on it (the other thread usually answers within
microseconds, and waking a thread that sleeps in the kernel costs tens of them), then gives up
and sleeps on a lock. Both steps need atomic memory operations, which Python does not offer:
they are two small functions written in LLVM IR, compiled by llvmlite (Numba's back end, so
already installed) in a few milliseconds and called through ctypes. The IR spells pointers
typed (``i64*``), the syntax older LLVMs require (LLVM 14 under Numba 0.59) and newer ones
read as opaque pointers.

``wait(address, allowed, spins, new, grace)``, on the int64 flag at ``address``: while the
flag holds 0 and the int64 at ``allowed`` does not, spin (a pause instruction between atomic
loads) at most ``spins`` times; then
compare-and-swap the flag from 0 to ``new``. It returns what the flag held before the swap: 0
if the swap happened (nothing came), otherwise the value another thread stored (which the swap
left in place), after ``grace`` more pauses. It releases the GIL while it runs; ``swap`` keeps
it (the same function, no spins, no grace).

``hand_over(done, job, allowed, spins, new, grace)`` swaps the flag at ``done`` from 0 to 1;
if it held something else (its waiter fell asleep), returns :data:`CALLER_ASLEEP` at once,
otherwise ``wait(job, allowed, spins, new, grace)``. It too runs without the GIL, so the thread
waiting on ``done`` finds the GIL free when it sees the flag.

``available`` is False where the functions could not be built: :mod:`npmobilenet.threads` then
uses its locks alone.
"""

from __future__ import annotations

import ctypes
import platform

_PAUSE = {  # the CPU's spin-loop hint: lets the other hyperthread run, saves power
    "x86_64": ("call void @llvm.x86.sse2.pause()", "declare void @llvm.x86.sse2.pause()"),
    "AMD64": ("call void @llvm.x86.sse2.pause()", "declare void @llvm.x86.sse2.pause()"),
    "aarch64": ("call void @llvm.aarch64.hint(i32 1)", "declare void @llvm.aarch64.hint(i32)"),
    "arm64": ("call void @llvm.aarch64.hint(i32 1)", "declare void @llvm.aarch64.hint(i32)"),
}

_IR = """
define i64 @wait(i64* %flag, i64* %allowed, i64 %spins, i64 %new, i64 %grace) {
entry:
  br label %loop
loop:
  %k = phi i64 [0, %entry], [%k1, %pause]
  %more = icmp slt i64 %k, %spins
  br i1 %more, label %load, label %swap
load:
  %v = load atomic i64, i64* %flag acquire, align 8
  %unset = icmp eq i64 %v, 0
  br i1 %unset, label %check, label %swap
check:
  %a = load atomic i64, i64* %allowed monotonic, align 8
  %go_on = icmp ne i64 %a, 0
  br i1 %go_on, label %pause, label %swap
pause:
  PAUSE
  %k1 = add i64 %k, 1
  br label %loop
swap:
  %pair = cmpxchg i64* %flag, i64 0, i64 %new acq_rel acquire
  %old = extractvalue {i64, i1} %pair, 0
  %came = icmp ne i64 %old, 0
  br i1 %came, label %grace_loop, label %done
grace_loop:
  %g = phi i64 [0, %swap], [%g1, %grace_pause]
  %more_grace = icmp slt i64 %g, %grace
  br i1 %more_grace, label %grace_pause, label %done
grace_pause:
  PAUSE
  %g1 = add i64 %g, 1
  br label %grace_loop
done:
  ret i64 %old
}

define i64 @hand_over(i64* %done, i64* %job, i64* %allowed, i64 %spins, i64 %new, i64 %grace) {
entry:
  %pair = cmpxchg i64* %done, i64 0, i64 1 acq_rel acquire
  %old = extractvalue {i64, i1} %pair, 0
  %asleep = icmp ne i64 %old, 0
  br i1 %asleep, label %woke, label %wait
woke:
  ret i64 -2 ; CALLER_ASLEEP
wait:
  %got = call i64 @wait(i64* %job, i64* %allowed, i64 %spins, i64 %new, i64 %grace)
  ret i64 %got
}
DECLARE
"""

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
CALLER_ASLEEP = -2  # hand_over's answer when the flag it set had a sleeping waiter


def _build():
    """``wait`` (GIL released), ``swap`` (GIL kept), ``hand_over`` (GIL released), and the
    engine that holds their code (it must stay alive as long as they may be called)."""
    import llvmlite.binding as llvm

    call, declare = _PAUSE.get(platform.machine(), ("", ""))
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(_IR.replace("PAUSE", call).replace("DECLARE", declare))
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    wait, hand_over = (engine.get_function_address(name) for name in ("wait", "hand_over"))
    return (
        ctypes.CFUNCTYPE(_I64, _PTR, _PTR, _I64, _I64, _I64)(wait),
        ctypes.PYFUNCTYPE(_I64, _PTR, _PTR, _I64, _I64, _I64)(wait),
        ctypes.CFUNCTYPE(_I64, _PTR, _PTR, _PTR, _I64, _I64, _I64)(hand_over),
        engine,
    )


try:
    wait, _swap, hand_over, _engine = _build()
    available = True
except Exception:  # noqa: BLE001 - no llvmlite, an unknown target: the locks alone still work
    wait = _swap = hand_over = _engine = None
    available = False


def swap(address: int, new: int) -> int:
    """Compare-and-swap the flag at ``address`` from 0 to ``new``, keeping the GIL; returns
    what the flag held (0: swapped)."""
    return _swap(address, address, 0, new, 0)

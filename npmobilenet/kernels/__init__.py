"""The ``@njit`` kernels behind ``npmobilenet.ops``: serial, typed, writing into arrays the
caller allocated.

Per op, one naive reference (plain loops or NumPy, named ``*_naive``) and one readable fast
kernel beside it, tested against each other:

* ``conv_direct``: convolution, ``conv2d_forward_naive`` / ``conv2d_backward_naive`` and the
  row-by-row ``conv2d_direct_forward`` / ``_backward_input`` / ``_backward_weight``;
* ``conv_depthwise``: the 3x3 depthwise convolution (``depthwise3x3_forward`` ...);
* ``im2col``: the copies that turn a convolution into a matrix product;
* ``batchnorm``, ``activations``, ``pool``: the per-element and per-window loops;
* ``fused_conv3x3``, ``fused_epilogue``: the channels-last kernels of eval-mode inference.

``tuned`` holds the variants measured faster on particular shapes, behind one dispatch table;
``fastmath`` the Numba fast-math flag sets they all use.
"""

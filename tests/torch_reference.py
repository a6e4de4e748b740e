"""The reference implementation (MobileNetV1 in PyTorch): the independent check of model parity.

Module names are exactly the reference implementation's (`first_conv`, `depthwise_sep_conv0..8`,
with `depthwise_sep_conv6` a ModuleList of five blocks, `fc`), so its state_dict keys are the ones
npmobilenet must produce. Differences from the article, all parameter-free: the final softmax is
left out (the model returns logits, as npmobilenet's does), the debugging prints are gone, and the
width multiplier, class count, input channels, activation and dropout are arguments instead of
globals. Dropout (default off) sits between pooling and ``fc``.

torch is passed in rather than imported so that importing this file never imports torch.
"""

from __future__ import annotations


def build_seed_mobilenet(
    torch, alpha=1.0, num_classes=1000, in_channels=3, activation="relu", dropout=0.0
):
    """Return the reference ``torch.nn.Module`` (in train mode, torch's default init)."""
    nn = torch.nn

    def act():
        return nn.ReLU6() if activation == "relu6" else nn.ReLU()

    class FirstConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, int(32 * alpha), 3, stride=2, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(int(32 * alpha))
            self.relu = act()

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)))

    class DepthwiseSeparableConv(nn.Module):
        def __init__(self, in_ch, out_ch, downsample=False):
            super().__init__()
            in_ch, out_ch = int(in_ch * alpha), int(out_ch * alpha)
            stride = 2 if downsample else 1
            self.dwconv = nn.Conv2d(
                in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False
            )
            self.bn0 = nn.BatchNorm2d(in_ch)
            self.pwconv = nn.Conv2d(in_ch, out_ch, 1, stride=1, padding=0, groups=1, bias=False)
            self.bn1 = nn.BatchNorm2d(out_ch)
            self.relu = act()

        def forward(self, x):
            x = self.relu(self.bn0(self.dwconv(x)))
            return self.relu(self.bn1(self.pwconv(x)))

    class MobileNetV1(nn.Module):
        def __init__(self):
            super().__init__()
            D = DepthwiseSeparableConv
            self.first_conv = FirstConv()
            self.depthwise_sep_conv0 = D(32, 64)
            self.depthwise_sep_conv1 = D(64, 128, downsample=True)
            self.depthwise_sep_conv2 = D(128, 128)
            self.depthwise_sep_conv3 = D(128, 256, downsample=True)
            self.depthwise_sep_conv4 = D(256, 256)
            self.depthwise_sep_conv5 = D(256, 512, downsample=True)
            self.depthwise_sep_conv6 = nn.ModuleList([D(512, 512) for _ in range(5)])
            self.depthwise_sep_conv7 = D(512, 1024, downsample=True)
            self.depthwise_sep_conv8 = D(1024, 1024)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(self.depthwise_sep_conv8.pwconv.out_channels, num_classes)

        def forward(self, x):
            x = self.first_conv(x)
            for i in range(6):
                x = getattr(self, f"depthwise_sep_conv{i}")(x)
            for block in self.depthwise_sep_conv6:
                x = block(x)
            x = self.depthwise_sep_conv7(x)
            x = self.depthwise_sep_conv8(x)
            x = torch.flatten(self.avgpool(x), start_dim=1)
            return self.fc(self.dropout(x))

    return MobileNetV1()


def randomize_batch_norm(torch, model, seed=1):
    """Give every BatchNorm2d of ``model`` non-trivial statistics and affine parameters (as a
    trained model has), drawn from ``seed``; returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model

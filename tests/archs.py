"""Small PyTorch models with the channel patterns of the torchvision CNNs and transformers.

torchvision cannot be imported beside CPU torch 2.13 here, so the tests build the same
blocks themselves: residual, bottleneck + grouped conv (ResNeXt), inverted residual with
SE and Hardswish (MobileNetV3/EfficientNet), dense concat (DenseNet), fire modules with a
Conv classifier (SqueezeNet), channel split + shuffle (ShuffleNetV2), channels-last
LayerNorm MLP (ConvNeXt), patch embedding + attention (ViT), and an encoder-decoder with
ConvTranspose, Resize and Pad.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():  # non-trivial statistics, so folded or not they matter
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.2, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return bn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), _bn(16), nn.ReLU(), nn.MaxPool2d(2))
        self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class ResNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), _bn(32), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(32, 32, 1), _bn(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=8), _bn(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 32, 1), _bn(32))
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), _bn(h), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), _bn(h), nn.Hardswish())
        self.se = SE(h)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), _bn(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class MobileNetV3Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), _bn(16), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(16), InvertedResidual(16))
        self.head = nn.Sequential(nn.Conv2d(16, 48, 1), _bn(48), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(48, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseNetLike(nn.Module):
    def __init__(self, growth=8, layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        c = 16
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.Sequential(_bn(c), nn.ReLU(), nn.Conv2d(c, 16, 1), _bn(16), nn.ReLU(),
                                             nn.Conv2d(16, growth, 3, 1, 1)))
            c += growth
        self.trans = nn.Sequential(_bn(c), nn.ReLU(), nn.Conv2d(c, 16, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(self.trans(x), 1).flatten(1))


class Fire(nn.Module):
    def __init__(self, cin, s, e):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, s, 1)
        self.e1, self.e3 = nn.Conv2d(s, e, 1), nn.Conv2d(s, e, 3, 1, 1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeNetLike(nn.Module):
    """Its classifier is a Conv whose output channels are the classes."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), Fire(16, 8, 16), Fire(32, 8, 16))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1, bias=False), _bn(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), _bn(h),
                                    nn.Conv2d(h, h, 1, bias=False), _bn(h), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean([2, 3]))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean([2, 3]))


class ViTLike(nn.Module):
    def __init__(self, dim=32, heads=4, patch=8, size=32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        h = self.ln1(x)
        n, t, d = h.shape
        q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(n, t, d))
        x = x + self.mlp(self.ln2(x))
        return self.head(x[:, 0])


class EncoderDecoder(nn.Module):
    """A segmentation-style net: ConvTranspose, Resize, Pad, skip Concat, Conv output."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), _bn(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), _bn(32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.up2 = nn.Conv2d(32, 16, 1)
        self.dec = nn.Sequential(nn.Conv2d(48, 16, 3), nn.ReLU())
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        u = torch.cat([e1, self.up(e2), F.interpolate(self.up2(e2), scale_factor=2.0, mode="nearest")], 1)
        return self.out(self.dec(F.pad(u, (1, 1, 1, 1))))


ARCHS = {
    "resnet": ResNetLike, "resnext": ResNeXtLike, "mobilenetv3": MobileNetV3Like,
    "densenet": DenseNetLike, "squeezenet": SqueezeNetLike, "shufflenet": ShuffleNetLike,
    "convnext": ConvNeXtLike, "vit": ViTLike, "encdec": EncoderDecoder,
}


def export(name: str, path: str, dynamo: bool) -> str:
    torch.manual_seed(0)
    model = ARCHS[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    return path

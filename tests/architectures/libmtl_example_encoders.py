"""Small encoders shaped like those of LibMTL's examples (no torchvision, no downloads).

- office: a module holding a ResNet as an attribute, then its own pooling and hidden layer;
- nyu / cityscapes: a dilated ResNet (the ResNet's attributes copied, strides turned into
  dilations), whose decoders read the feature map;
- qm9: a message-passing network on a graph batch given as a dict (node features,
  edges, graph index), pooled to one vector per graph;
- xtreme: a module holding a small transformer as an attribute, on a dict of token ids,
  attention mask and token types, returning the first token's pooled state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """The ResNet layout LibMTL uses (no avgpool/fc: forward ends at layer4), 8 channels wide."""

    feature_dim = 16

    def __init__(self, dilated: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        # Dilated (nyu, cityscapes): the last layers keep the resolution and dilate instead.
        self.layer3 = nn.Sequential(BasicBlock(16, 16, stride=1 if dilated else 2, dilation=2 if dilated else 1))
        self.layer4 = nn.Sequential(BasicBlock(16, 16, stride=1, dilation=4 if dilated else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OfficeEncoder(nn.Module):
    """office: the ResNet as an attribute, then global pooling and a hidden layer (Linear, BN, ReLU, Dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet_network = SmallResNet()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.hidden_layer = nn.Sequential(nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.resnet_network(inputs)
        return self.hidden_layer(torch.flatten(self.avgpool(out), 1))


class DilatedResNet(nn.Module):
    """nyu / cityscapes: LibMTL's ResnetDilated copies a ResNet's stem and layers as its own attributes."""

    def __init__(self) -> None:
        super().__init__()
        base = SmallResNet(dilated=True)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(base, name))
        self.feature_dim = base.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DenseHead(nn.Module):
    """A per-pixel head (nyu/cityscapes decoders) upsampling back to the input resolution."""

    def __init__(self, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, channels, 1)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), self.size, mode="bilinear", align_corners=True)


class GraphEncoder(nn.Module):
    """qm9: node embedding, three rounds of mean message passing with a GRU cell, mean pooling per graph."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.lin0 = nn.Linear(11, dim)
        self.message = nn.Linear(dim + 5, dim)
        self.gru = nn.GRUCell(dim, dim)
        self.lin1 = nn.Linear(dim, dim)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        h = F.relu(self.lin0(data["x"]))
        src, dst = data["edge_index"]
        for _ in range(3):
            messages = F.relu(self.message(torch.cat([h[src], data["edge_attr"]], dim=1)))
            incoming = torch.zeros_like(h).index_add(0, dst, messages)
            degree = torch.zeros(h.shape[0], 1).index_add(0, dst, torch.ones(dst.shape[0], 1)).clamp(min=1)
            h = self.gru(incoming / degree, h)
        graphs = int(data["batch"].max()) + 1
        pooled = torch.zeros(graphs, h.shape[1]).index_add(0, data["batch"], h)
        counts = torch.zeros(graphs, 1).index_add(0, data["batch"], torch.ones(h.shape[0], 1))
        return F.relu(self.lin1(pooled / counts))


class TinyBert(nn.Module):
    """Token, position and type embeddings, one transformer layer, a tanh pooler on the first token."""

    def __init__(self, vocab: int = 30, dim: int = 16, length: int = 12) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        self.types = nn.Embedding(2, dim)
        self.layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.pooler = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1])
        h = self.tokens(input_ids) + self.positions(positions) + self.types(token_type_ids)
        h = self.layer(h, src_key_padding_mask=attention_mask == 0)
        return h, torch.tanh(self.pooler(h[:, 0]))


class TextEncoder(nn.Module):
    """xtreme: the language model as an attribute; returns its pooled output."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = TinyBert()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = self.bert(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
        )
        return outputs[1]


def image_batch(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def graph_batch(graphs: int = 3, nodes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """`graphs` ring graphs of `nodes` nodes each, as one disjoint batch."""
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(graphs * nodes)
    dst = (src % nodes + 1) % nodes + src // nodes * nodes  # the next node of the same ring
    return {
        "x": torch.randn(graphs * nodes, 11, generator=g),
        "edge_index": torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]),
        "edge_attr": torch.randn(2 * graphs * nodes, 5, generator=g),
        "batch": torch.arange(graphs).repeat_interleave(nodes),
    }


def text_batch(n: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[:, length // 2 :] = torch.randint(0, 2, (n, length - length // 2), generator=g)
    return {
        "input_ids": torch.randint(0, 30, (n, length), generator=g),
        "attention_mask": mask,
        "token_type_ids": torch.zeros(n, length, dtype=torch.long),
    }

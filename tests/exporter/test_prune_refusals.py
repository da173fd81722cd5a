"""Models pruning cannot handle are refused in one line naming the module, never a crash."""

from __future__ import annotations

import textwrap

import pytest

from torchship.cli.main import main

# timm-style attention: one fused qkv Linear whose output is reshaped by head count, which
# channel pruning breaks ("shape '[1, 65, 3, 6, 64]' is invalid" on timm's ViT-S/16).
FUSED_QKV = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()
            self.fc1 = nn.Linear(32, 64)
            self.fc2 = nn.Linear(64, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            x = x + self.attn(x)
            x = x + self.fc2(self.fc1(x).relu())
            return self.head(x.mean(1))

    def block():
        torch.manual_seed(0)
        return Block()
    """
)


@pytest.fixture()
def fused(tmp_path):
    path = tmp_path / "fused_models.py"
    path.write_text(FUSED_QKV)
    return f"{path}:block"


def test_fused_qkv_attention_is_refused_naming_the_module(fused, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", fused, "--input", "x:2x9x32", "--ratio", "0.3", "--round-to", "1",
                 "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    assert "internal error" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "module 'attn' (Attention)" in err, err
    assert "--ignore attn.qkv,attn.proj" in err, err  # the way out, tested below
    assert not out.exists()


def test_ignoring_the_attention_block_lets_the_rest_be_pruned(fused, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", fused, "--input", "x:2x9x32", "--ratio", "0.3", "--round-to", "1",
                 "--ignore", "attn.qkv,attn.proj", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "model.onnx").is_file()

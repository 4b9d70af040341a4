"""The draft network: shapes, EAGLE-1 layout, and the training attention rule."""

import torch

from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.training.attention import causal_text_attention, text_window_mask
from tests.unit.helpers import layer_config, sparrow_config


def _model(layers=2, **kw):
    torch.manual_seed(0)
    return SparrowDraftModel(layer_config(num_hidden_layers=layers), sparrow_config(num_layers=layers, **kw))


def test_forward_shapes_and_gradients():
    model = _model()
    t = 7
    embeds, hidden = torch.randn(t, 32), torch.randn(t, 32, requires_grad=True)
    out = model(embeds, hidden, torch.arange(t), causal_text_attention(1, t, None))
    assert out.shape == (t, 32)
    out.sum().backward()
    assert hidden.grad is not None and model.fc.weight.grad is not None


def test_eagle_layout():
    model = _model(layers=2, fc_bias=False)
    names = set(model.state_dict())
    assert "fc.bias" not in names
    assert "layers.0.input_layernorm.weight" not in names  # EAGLE-1: no input norm first
    assert "layers.1.input_layernorm.weight" in names
    assert "layers.0.self_attn.q_proj.bias" in names  # Qwen2 q/k/v bias
    assert "layers.0.self_attn.o_proj.bias" not in names
    assert not any(n.startswith("norm") for n in names)  # no final norm


def test_rows_only_see_the_past():
    model = _model()
    t = 6
    embeds, hidden = torch.randn(t, 32), torch.randn(t, 32)
    full = model(embeds, hidden, torch.arange(t), causal_text_attention(1, t, None))
    prefix = model(embeds[:4], hidden[:4], torch.arange(4), causal_text_attention(1, 4, None))
    torch.testing.assert_close(full[:4], prefix)


def test_window_mask():
    mask = text_window_mask(5, 2)
    assert mask.tolist()[4] == [False, False, False, True, True]
    assert text_window_mask(3, None).tolist() == [[True, False, False], [True, True, False], [True, True, True]]

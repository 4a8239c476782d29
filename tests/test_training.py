"""Fine-tuning semantics (TF-Hub v3): batch norm, drop path, dropout, aux head, gradients."""

import pytest
import torch
import torch.nn.functional as F

from pnasnet.model import LARGE, MOBILE, PNASNet, PNASNetConfig
from pnasnet.model.ops import drop_path

TINY = PNASNetConfig("tiny", num_cells=6, num_conv_filters=8, stem_multiplier=0.25, image_size=96,
                     drop_path_keep_prob=0.6)


def tiny(**kwargs):
    torch.manual_seed(0)
    return PNASNet(TINY, num_classes=5, **kwargs)


def _conv0_batch_stats(model, x):
    """Batch mean and unbiased variance of conv0's output, computed apart from the model."""
    y = F.conv2d((x - 0.5) * 2.0, model.conv0.weight, stride=2)
    return y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=True)


@pytest.mark.parametrize("per_call_decay", [None, 0.9])
def test_moving_average_update_and_per_call_decay(per_call_decay):
    model = tiny().train()
    bn = model.conv0_bn
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        model.classify(x, batch_norm_decay=per_call_decay)
        mean, var = _conv0_batch_stats(model, x)
    decay = 0.99 if per_call_decay is None else per_call_decay  # TF-Hub v3 default 0.99
    torch.testing.assert_close(bn.running_mean, decay * old_mean + (1 - decay) * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, decay * old_var + (1 - decay) * var, rtol=1e-5, atol=1e-6)
    # A per-call decay does not leak into later calls.
    assert all(abs(m.momentum - 0.01) < 1e-12 for m in model.batch_norms())


def test_decay_set_at_construction_and_batch_statistics_used():
    model = tiny(batch_norm_decay=0.997).train()
    assert all(abs(m.momentum - 0.003) < 1e-12 for m in model.batch_norms())
    # In training mode the output does not depend on the moving statistics.
    x = torch.rand(3, 3, 64, 64)
    model.set_drop_path_progress(0.0)
    model.final_layer.dropout.p = 0.0
    with torch.no_grad():
        a = model.features(x)
        for bn in model.batch_norms():
            bn.running_mean.add_(5.0)
        b = model.features(x)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="batch_norm_decay"):
        model.set_batch_norm_decay(1.5)


def test_drop_path_keep_probabilities_follow_tf_slim():
    model = PNASNet(LARGE)
    # Architecture notes, section 4: 1 - (c+1)/14 * 0.4 for cells c = 0 (stem_0) .. 13 (cell_11).
    listed = [0.97143, 0.94286, 0.91429, 0.88571, 0.85714, 0.82857, 0.8, 0.77143, 0.74286,
              0.71429, 0.68571, 0.65714, 0.62857, 0.6]
    got = [model._modules[n].drop_path_keep_prob for n in model.cell_names]
    assert got == pytest.approx(listed, abs=5e-6)
    # Halfway along the optional from-scratch ramp; the default holds the final value.
    model.set_drop_path_progress(0.5)
    assert model.cell_11._keep_prob() == pytest.approx(0.8)
    model.set_drop_path_progress(1.0)
    assert model.cell_11._keep_prob() == pytest.approx(0.6)
    assert all(PNASNet(MOBILE)._modules[n].drop_path_keep_prob == 1.0 for n in model.cell_names[:11])


def test_drop_path_statistics():
    torch.manual_seed(1234)
    x = torch.ones(20000, 2, 3, 3)
    y = drop_path(x, 0.7)
    kept = (y[:, 0, 0, 0] != 0).float()
    # Whole examples are kept or dropped, kept ones scaled by 1/keep.
    assert torch.equal((y != 0).float().amax(dim=(1, 2, 3)), (y != 0).float().amin(dim=(1, 2, 3)))
    assert torch.allclose(y[kept.bool()], torch.full_like(y[kept.bool()], 1 / 0.7))
    rate = kept.mean().item()
    sigma = (0.7 * 0.3 / 20000) ** 0.5
    assert abs(rate - 0.7) < 5 * sigma
    assert torch.equal(drop_path(x, 1.0), x)


def test_drop_path_only_in_training_and_never_on_the_none_branch():
    model = tiny()
    x = torch.rand(2, 3, 64, 64)
    cell = model.cell_1  # a normal cell: its 'none' branch is the identity on h0
    captured = {}
    hook = cell.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    h0_hook = cell.beginning_bn.register_forward_hook(lambda m, i, o: captured.setdefault("h0", o))
    model.train()
    for name in model.cell_names:
        model._modules[name].drop_path_keep_prob = 1e-9  # drop every droppable branch
    with torch.no_grad():
        model.features(x)
    hook.remove()
    h0_hook.remove()
    f = cell.filters
    out, h0 = captured["out"], captured["h0"]
    assert torch.count_nonzero(out[:, : 4 * f]) == 0  # blocks 0-3: only dropped branches
    torch.testing.assert_close(out[:, 4 * f :], h0)   # block 4: dropped sep3x3 + identity h0
    model.eval()
    with torch.no_grad():
        a, b = model.features(x), model.features(x)
    assert torch.count_nonzero(a) > 0 and torch.equal(a, b)


def test_dropout_before_final_layer_in_training_only():
    model = tiny().train()
    model.set_drop_path_progress(0.0)
    seen = []
    model.final_layer.FC.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.rand(16, 3, 64, 64)
    with torch.no_grad():
        model.classify(x)
        pooled = model.features(x)
    dropped = seen[0]
    zero_fraction = ((dropped == 0) & (pooled != 0)).sum() / (pooled != 0).sum()
    assert 0.35 < zero_fraction.item() < 0.65  # keep probability 0.5
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * pooled[kept])
    model.eval()
    with torch.no_grad():
        model.classify(x)
    torch.testing.assert_close(seen[-1], model.features(x))


def test_aux_head_shapes_and_rules():
    for config, kernel in ((LARGE, 6), (MOBILE, 4)):
        model = PNASNet(config, aux_head=True)
        head = model._modules[f"aux_{config.aux_cell_index()}"].aux_logits
        assert head.Conv.kernel_size == (kernel, kernel)  # the whole remaining map at native size
    model = tiny(aux_head=True).train()
    assert model.aux_cell == 3  # the cell before the second reduction (cells 2 and 4 reduce)
    logits, aux = model.classify(torch.rand(2, 3, 96, 96), with_aux=True)
    assert logits.shape == aux.shape == (2, 5)
    with pytest.raises(ValueError, match="aux head was built for"):
        model.classify(torch.rand(2, 3, 128, 128), with_aux=True)
    model.eval()
    with pytest.raises(RuntimeError, match="only in training mode"):
        model.classify(torch.rand(2, 3, 96, 96), with_aux=True)
    assert model.classify(torch.rand(2, 3, 128, 128)).shape == (2, 5)  # eval ignores the aux head
    with pytest.raises(ValueError, match="at least 5x5"):
        PNASNet(PNASNetConfig("small", 6, 8, 0.25, image_size=64, drop_path_keep_prob=0.6), aux_head=True)


def test_gradients_reach_every_trainable_parameter():
    model = tiny(aux_head=True).train()
    logits, aux = model.classify(torch.rand(4, 3, 96, 96), with_aux=True)
    target = torch.tensor([0, 1, 2, 3])
    (F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)).backward()
    params = dict(model.named_parameters())
    no_grad = [n for n, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, no_grad
    assert len(params) > 300

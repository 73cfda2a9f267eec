"""The GAT generator (docs/method.md §2)."""

import math

import pytest
import torch
from torch import nn

from gatgan.models.generator import ExitLayer, Generator, GeneratorBlock
from gatgan.models.layers import EqualLinear, RotaryEmbedding2D, unpatchify

SIZE, CHANNELS, PATCH, WIDTH, CLASSES, Z_DIM = 8, 4, 2, 32, 10, 16


def make_generator(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    kwargs = dict(input_size=SIZE, channels=CHANNELS, patch_size=PATCH, width=WIDTH, depth=4, num_heads=2,
                  num_classes=CLASSES, z_dim=Z_DIM, num_exits=4)
    kwargs.update(overrides)
    return Generator(**kwargs).eval()


def inputs(batch: int = 3, seed: int = 1, z_dim: int = Z_DIM):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, z_dim, generator=g), torch.randint(0, CLASSES, (batch,), generator=g)


# ---------------------------------------------------------------------------------------------
# Shapes and exits
# ---------------------------------------------------------------------------------------------

def test_output_shapes_single_image_and_all_exits():
    G = make_generator()
    z, y = inputs(batch=3)
    with torch.no_grad():
        assert G(z, y).shape == (3, CHANNELS, SIZE, SIZE)
        assert G(z, y, all_exits=True).shape == (4, 3, CHANNELS, SIZE, SIZE)
        G2 = make_generator(depth=4, num_exits=2)
        assert G2(z, y, all_exits=True).shape == (2, 3, CHANNELS, SIZE, SIZE)


def test_last_exit_equals_the_forward_output():
    G = make_generator()
    z, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(G(z, y, all_exits=True)[-1], G(z, y), rtol=0, atol=0)


def test_exits_are_running_sums_of_the_exit_heads():
    G = make_generator()
    z, y = inputs()
    heads = []
    hooks = [e.register_forward_hook(lambda m, args, out: heads.append(out)) for e in G.exits]
    with torch.no_grad():
        exits = G(z, y, all_exits=True)
    for h in hooks:
        h.remove()
    assert len(heads) == 4
    images = torch.stack([unpatchify(h, PATCH, CHANNELS) for h in heads])
    torch.testing.assert_close(exits, images.cumsum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_zeroing_one_exit_head_removes_only_its_increment(k):
    G = make_generator()
    z, y = inputs()
    with torch.no_grad():
        before = G(z, y, all_exits=True)
        G.exits[k].linear.weight.zero_()
        G.exits[k].linear.bias.zero_()
        after = G(z, y, all_exits=True)
    if k == 0:
        assert torch.equal(after[0], torch.zeros_like(after[0]))
    else:
        torch.testing.assert_close(after[k], after[k - 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(after[:k], before[:k], rtol=0, atol=0)  # earlier exits untouched
    for j in range(k + 1, 4):  # later heads still add exactly what they added before
        torch.testing.assert_close(after[j] - after[j - 1], before[j] - before[j - 1], rtol=1e-5, atol=1e-5)
    for j in range(1, 4):  # the unzeroed heads do contribute
        if j != k:
            assert (after[j] - after[j - 1]).abs().max() > 1e-3


@pytest.mark.parametrize("depth, num_exits", [(4, 4), (8, 4), (6, 2), (6, 1)])
def test_each_exit_follows_depth_over_k_blocks(depth, num_exits):
    G = make_generator(depth=depth, num_exits=num_exits)
    assert G.exit_every == depth // num_exits
    order = []
    for i, block in enumerate(G.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: order.append(f"block{i}"))
    for i, exit_layer in enumerate(G.exits):
        exit_layer.register_forward_hook(lambda m, a, o, i=i: order.append(f"exit{i}"))
    z, y = inputs()
    with torch.no_grad():
        G(z, y, all_exits=True)
    expected = []
    per_exit = depth // num_exits
    for e in range(num_exits):
        expected += [f"block{e * per_exit + j}" for j in range(per_exit)] + [f"exit{e}"]
    assert order == expected


@pytest.mark.parametrize("depth, num_exits", [(6, 4), (4, 3), (4, 0)])
def test_depth_not_a_multiple_of_num_exits_raises(depth, num_exits):
    with pytest.raises(ValueError):
        make_generator(depth=depth, num_exits=num_exits)


def test_input_size_not_divisible_by_patch_raises():
    with pytest.raises(ValueError):
        make_generator(input_size=9, patch_size=2)


# ---------------------------------------------------------------------------------------------
# Truncation and w_avg
# ---------------------------------------------------------------------------------------------

def _randomise_w_avg(G: Generator) -> None:
    with torch.no_grad():
        G.w_avg.copy_(torch.randn_like(G.w_avg))


def test_truncation_one_is_identity_even_with_nonzero_w_avg():
    G = make_generator()
    _randomise_w_avg(G)
    z, y = inputs()
    with torch.no_grad():
        w = G.mapping(z, y)
        torch.testing.assert_close(G(z, y, truncation=1.0), G.synthesize(w), rtol=0, atol=0)
        torch.testing.assert_close(G.truncate(w, y, 1.0), w, rtol=0, atol=0)


def test_truncation_zero_returns_the_image_of_the_class_average_w():
    G = make_generator()
    _randomise_w_avg(G)
    z, y = inputs()
    z2, _ = inputs(seed=7)
    with torch.no_grad():
        out = G(z, y, truncation=0.0)
        torch.testing.assert_close(out, G.synthesize(G.w_avg[y]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(G(z2, y, truncation=0.0), out, rtol=1e-6, atol=1e-6)  # z no longer matters


def test_truncation_interpolates_from_class_average_towards_w():
    G = make_generator()
    _randomise_w_avg(G)
    z, y = inputs()
    with torch.no_grad():
        w = G.mapping(z, y)
        expected = G.w_avg[y] + 0.3 * (w - G.w_avg[y])  # StyleGAN psi = 0.3
        torch.testing.assert_close(G.truncate(w, y, 0.3), expected)


def test_guidance_extrapolates_from_the_class_averaged_w_of_the_same_z():
    G = make_generator()
    z, y = inputs()
    with torch.no_grad():
        w = G.mapping(z, y)
        w_null = torch.stack([
            torch.stack([G.mapping(z[i:i + 1], torch.tensor([c]))[0] for c in range(CLASSES)]).mean(0)
            for i in range(len(z))
        ])
        expected = G.synthesize(w_null + 2.0 * (w - w_null))
        torch.testing.assert_close(G(z, y, guidance=2.0), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(G(z, y, guidance=1.0), G.synthesize(w), rtol=0, atol=0)


def test_authors_guidance_normalises_over_the_class_axis_and_truncates_first():
    """Their w_null, written out: z repeated over the classes and the class table, each normalised
    over the class axis (z becomes about sign(z)); their order: truncate, then guide."""
    G = make_generator()
    _randomise_w_avg(G)
    z, y = inputs()
    mapping = G.mapping
    with torch.no_grad():
        table = mapping.class_embed.weight
        embeds = table / table.square().mean(0, keepdim=True).add(1e-8).sqrt()  # per channel, over classes
        w_null = []
        for zi in z:
            signs = zi / (zi.square() + 1e-8).sqrt()  # one z repeated: its RMS over classes is |z_j|
            h = torch.cat([signs.expand(CLASSES, -1), embeds], dim=1)
            w_null.append(mapping.fc2(nn.functional.silu(mapping.fc1(h))).mean(0))
        w_null = torch.stack(w_null)
        truncated = G.truncate(G.mapping(z, y), y, 0.7)
        expected = G.synthesize(w_null + 2.0 * (truncated - w_null))
        torch.testing.assert_close(G(z, y, truncation=0.7, guidance=2.0, guidance_form="authors"), expected,
                                   rtol=1e-4, atol=1e-5)
        intended = G(z, y, truncation=0.7, guidance=2.0)
        assert not torch.allclose(intended, expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="guidance form"):
        G(z, y, guidance=2.0, guidance_form="mine")


def test_update_w_avg_is_a_beta_0995_ema_of_present_classes_only():
    G = make_generator()
    assert G.w_avg_beta == 0.995
    _randomise_w_avg(G)
    old = G.w_avg.clone()
    torch.manual_seed(3)
    w = torch.randn(6, WIDTH)
    y = torch.tensor([0, 0, 2, 2, 2, 5])
    G.update_w_avg(w, y)
    expected = old.clone()
    for c in (0, 2, 5):
        batch_mean = w[y == c].mean(0)
        expected[c] = 0.995 * old[c] + 0.005 * batch_mean
    torch.testing.assert_close(G.w_avg, expected, rtol=1e-6, atol=1e-6)
    absent = [c for c in range(CLASSES) if c not in (0, 2, 5)]
    assert torch.equal(G.w_avg[absent], old[absent])


def test_forward_updates_w_avg_only_when_asked():
    G = make_generator()
    z, y = inputs()
    with torch.no_grad():
        G(z, y)
        assert torch.equal(G.w_avg, torch.zeros_like(G.w_avg))
        G(z, y, update_w_avg=True)
        w = G.mapping(z, y)
    expected = torch.zeros_like(G.w_avg)
    for c in y.unique():
        expected[c] = 0.005 * w[y == c].mean(0)
    torch.testing.assert_close(G.w_avg, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Conditioning structure
# ---------------------------------------------------------------------------------------------

def test_modulation_has_scale_and_gate_but_no_shift():
    G = make_generator()
    for block in G.blocks:
        assert isinstance(block.modulation[0], nn.SiLU)
        assert block.modulation[-1].in_features == WIDTH
        assert block.modulation[-1].out_features == 4 * WIDTH  # scale, gate per branch; no shift
    for exit_layer in G.exits:
        assert exit_layer.modulation[-1].out_features == WIDTH  # scale only
        assert exit_layer.linear.out_features == PATCH * PATCH * CHANNELS


def test_block_with_zero_modulation_is_identity_and_scale_multiplies_normalised_input():
    """x + gate * f(rms(x) * (1 + scale)): zero gates leave x unchanged; the scale enters as 1 + s."""
    torch.manual_seed(0)
    block = GeneratorBlock(WIDTH, 2, 64)
    rope = RotaryEmbedding2D(WIDTH // 2, 4)
    x, w = torch.randn(2, 16, WIDTH), torch.randn(2, WIDTH)
    with torch.no_grad():
        block.modulation[-1].weight.zero_()
        block.modulation[-1].bias.zero_()
        assert torch.equal(block(x, w, rope), x)
        # gates = 1, scales = s: compare with the formula
        s = 0.3
        block.modulation[-1].bias.copy_(torch.cat([torch.full((WIDTH,), v) for v in (s, 1.0, s, 1.0)]))
        rms = lambda t: t / torch.sqrt(t.square().mean(-1, keepdim=True) + 1e-6)
        h = x + block.attn(rms(x) * (1 + s), rope)
        expected = h + block.mlp(rms(h) * (1 + s))
        torch.testing.assert_close(block(x, w, rope), expected, rtol=1e-5, atol=1e-5)


def test_exit_layer_is_modulated_rmsnorm_then_linear():
    torch.manual_seed(0)
    exit_layer = ExitLayer(WIDTH, PATCH, CHANNELS)
    x, w = torch.randn(2, 16, WIDTH), torch.randn(2, WIDTH)
    with torch.no_grad():
        scale = exit_layer.modulation(w)[:, None]
        normed = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6)
        expected = exit_layer.linear(normed * (1 + scale))
        torch.testing.assert_close(exit_layer(x, w), expected, rtol=1e-5, atol=1e-5)


def test_output_depends_only_on_z_and_y_not_on_a_random_input_latent():
    G = make_generator()
    assert not any(isinstance(m, nn.Conv2d) for m in G.modules())  # no x_embedder
    assert not hasattr(G, "x_embedder")
    z, y = inputs()
    with torch.no_grad():
        torch.manual_seed(123)
        a = G(z, y)
        torch.manual_seed(456)
        torch.randn(1000)
        b = G(z, y)
    assert torch.equal(a, b)


def test_output_depends_on_z_and_on_y():
    G = make_generator()
    z, y = inputs()
    z2, _ = inputs(seed=9)
    with torch.no_grad():
        base = G(z, y)
        assert (G(z2, y) - base).abs().max() > 1e-4
        assert (G(z, (y + 1) % CLASSES) - base).abs().max() > 1e-4


def test_mapping_normalises_z_and_class_embedding_separately():
    """Scaling z leaves w unchanged (normalize_2nd_moment), and the mapping uses equalised layers
    with lr_mult 0.01."""
    G = make_generator()
    z, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(G.mapping(z * 7.0, y), G.mapping(z, y), rtol=1e-5, atol=1e-6)
    assert isinstance(G.mapping.fc1, EqualLinear) and isinstance(G.mapping.fc2, EqualLinear)
    assert G.mapping.fc1.lr_mult == 0.01 and G.mapping.fc2.lr_mult == 0.01
    assert G.mapping.fc1.weight.shape == (WIDTH, Z_DIM + 64)


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    G = make_generator().train()
    z, y = inputs()
    target = torch.randn(4, 3, CHANNELS, SIZE, SIZE)

    def run():
        G.zero_grad()
        out = G(z, y, all_exits=True)
        (out - target).square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in G.named_parameters()}

    G.grad_checkpointing = False
    out_plain, grads_plain = run()
    G.grad_checkpointing = True
    out_ckpt, grads_ckpt = run()
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------

def test_modulation_layers_start_near_zero():
    G = make_generator(width=64)
    for module in [*G.blocks, *G.exits]:
        linear = module.modulation[-1]
        fan_out, fan_in = linear.weight.shape
        xavier_std = math.sqrt(2.0 / (fan_in + fan_out))
        std = linear.weight.std().item()
        assert std == pytest.approx(0.1 * xavier_std, rel=0.15)  # gain 0.1
        assert std < 0.2 * xavier_std
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))


def test_exit_heads_are_not_zero_initialised_and_other_linears_are_xavier():
    G = make_generator(width=64)
    for linear in [G.exits[0].linear, G.blocks[0].attn.qkv, G.blocks[0].mlp.w12]:
        fan_out, fan_in = linear.weight.shape
        xavier_std = math.sqrt(2.0 / (fan_in + fan_out))
        assert linear.weight.std().item() == pytest.approx(xavier_std, rel=0.15)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    # the mapping network's effective weights are xavier-scale too (stored x100)
    fc1 = G.mapping.fc1
    effective = fc1.weight * fc1.lr_mult
    fan_out, fan_in = effective.shape
    assert effective.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.15)
    assert G.mapping.class_embed.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_w_avg_is_a_per_class_buffer_saved_with_the_model():
    G = make_generator()
    assert G.w_avg.shape == (CLASSES, WIDTH)
    assert "w_avg" in G.state_dict()
    assert "w_avg" not in dict(G.named_parameters())

"""Properties of the clustering layer, the loss and one training step (issue #2)."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tell.encoders import EncoderSpec
from tell.engine import train_step
from tell.layer import ClusterLayer
from tell.losses import cluster_loss, cluster_loss_constant
from tell.model import TELLNet
from tell.schedule import CENTERS, FEATURES, PRETRAIN, phase_for_epoch


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_rows_of_w_at_two_alpha_after_init_and_any_step():
    layer = ClusterLayer(7, 5, alpha=0.003)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.full((7,), 0.006))
    for seed in range(5):
        layer.weight.grad = (
            torch.randn(7, 5, generator=torch.Generator().manual_seed(seed)) * 10**seed
        )
        layer.step_(lr=1.0)
        torch.testing.assert_close(layer.weight.norm(dim=1), torch.full((7,), 0.006))


def test_normalized_gradient_rows_have_ten_percent_of_center_norm_and_zero_rows_stay_zero():
    layer = ClusterLayer(4, 3)
    grad = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1e-9, 0.0, 0.0], [-5.0, 0.0, 1.0]])
    layer.weight.grad = grad.clone()
    layer.normalize_center_grads_()
    norms = layer.weight.grad.norm(dim=1)
    expected = 0.1 * layer.weight.detach().norm(dim=1)
    torch.testing.assert_close(norms[[0, 2, 3]], expected[[0, 2, 3]])
    assert torch.equal(layer.weight.grad[1], torch.zeros(3))
    # direction is kept
    torch.testing.assert_close(
        F.normalize(layer.weight.grad[0], dim=0), F.normalize(grad[0], dim=0)
    )


def test_centers_are_unit_vectors_equal_to_w_over_two_alpha():
    layer = ClusterLayer(6, 4, alpha=0.001)
    torch.testing.assert_close(layer.centers.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(layer.centers, layer.weight.detach() / 0.002)


def test_argmax_score_is_nearest_center():
    layer = ClusterLayer(9, 8)
    z = unit(100, 8)
    scores = layer(z)
    nearest = torch.cdist(z, layer.centers).argmin(dim=1)
    assert torch.equal(scores.argmax(dim=1), nearest)
    torch.testing.assert_close(
        layer.distances(scores), torch.cdist(z, layer.centers) ** 2, atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("k", [2, 5, 16])
def test_cluster_loss_is_constant_plus_scaled_mean_squared_distance(k):
    layer = ClusterLayer(k, 6, alpha=0.001)
    z = unit(50, 6, seed=k)
    scores = layer(z)
    labels = scores.argmax(dim=1)
    sq = ((z - layer.centers[labels]) ** 2).sum(dim=1)
    picked = scores.gather(1, labels[:, None]).squeeze(1)
    loss = cluster_loss(picked, k, layer.alpha, weight=0.01)
    expected = cluster_loss_constant(k, 0.01) + (0.01 / k) * sq.mean()
    torch.testing.assert_close(loss, expected.to(loss), rtol=1e-4, atol=1e-7)
    # the reference code's literal formula
    onehot = F.one_hot(labels, k).float()
    literal = 0.01 / layer.alpha * (2 * layer.alpha - onehot * scores).mean()
    torch.testing.assert_close(loss, literal, rtol=1e-5, atol=1e-8)


def test_worked_example_one_step_moves_center_ten_percent_toward_its_points():
    """Two centers on the axes of the plane; points at +-30 degrees around e_x."""
    net = TELLNet(EncoderSpec("identity", 2), n_clusters=2)
    net.cluster.set_centers_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    angle = torch.tensor([0.5, -0.5, 1.0, 1.3])
    x = torch.stack([angle.cos(), angle.sin()], dim=1)  # all four nearer to e_x? check
    labels = net(x).labels
    assert labels.tolist() == [0, 0, 0, 0]
    train_step(net, x, None, CENTERS)
    # gradient of L_clu for center 0 is -(sum of its points): the step adds 10% of |W_0|
    # along the mean direction, then projects.
    direction = F.normalize(x.sum(dim=0), dim=0)
    expected = F.normalize(torch.tensor([1.0, 0.0]) + 0.1 * direction, dim=0)
    torch.testing.assert_close(net.cluster.centers[0], expected)
    # center 1 got no point: it does not move
    torch.testing.assert_close(net.cluster.centers[1], torch.tensor([0.0, -1.0]))


def _mlp_net(seed=0):
    torch.manual_seed(seed)
    return TELLNet(EncoderSpec("mlp", 12, latent_dim=3, hidden_dims=(8,)), n_clusters=4)


def test_even_epochs_encoder_gets_no_cluster_gradient():
    net = _mlp_net()
    x = torch.rand(32, 12)
    out = net(x, detach_features=True)
    clu = cluster_loss(out.picked, 4, net.cluster.alpha)
    clu.backward()
    for name, p in net.named_parameters():
        if name.startswith("encoder"):
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert torch.count_nonzero(net.cluster.weight.grad) > 0


def test_odd_epochs_centers_do_not_move_but_encoder_learns():
    net = _mlp_net()
    x = torch.rand(32, 12)
    before = net.cluster.weight.detach().clone()
    enc_before = [p.detach().clone() for p in net.encoder.parameters()]
    opt = torch.optim.SGD(
        [p for n, p in net.named_parameters() if not n.startswith("cluster")], lr=0.1
    )
    train_step(net, x, opt, FEATURES)
    assert torch.equal(net.cluster.weight.detach(), before)
    assert any(
        not torch.equal(a, b.detach())
        for a, b in zip(enc_before, net.encoder.parameters(), strict=True)
    )


def test_pretrain_phase_leaves_centers_alone():
    net = _mlp_net()
    before = net.cluster.weight.detach().clone()
    opt = torch.optim.SGD(
        [p for n, p in net.named_parameters() if not n.startswith("cluster")], lr=0.1
    )
    train_step(net, torch.rand(16, 12), opt, PRETRAIN)
    assert torch.equal(net.cluster.weight.detach(), before)


def test_schedule_alternates_only_with_an_autoencoder():
    assert [phase_for_epoch(e, True) for e in range(4)] == [CENTERS, FEATURES, CENTERS, FEATURES]
    assert {phase_for_epoch(e, False) for e in range(4)} == {CENTERS}


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3), (13, 9, 2)])
def test_conv_autoencoder_reconstructs_any_image_shape(shape):
    h, w, c = shape
    net = TELLNet(EncoderSpec("conv", h * w * c, latent_dim=10, image_shape=shape), n_clusters=3)
    out = net(torch.rand(4, h * w * c))
    assert out.x_hat.shape == (4, h * w * c)
    assert out.z.shape == (4, 10)
    torch.testing.assert_close(out.z.norm(dim=1), torch.ones(4))
    x_hat = out.x_hat.detach()
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0


def test_identity_features_are_normalized_inputs():
    net = TELLNet(EncoderSpec("identity", 5), n_clusters=2)
    x = torch.randn(10, 5) * 3
    out = net(x)
    assert out.x_hat is None
    torch.testing.assert_close(out.z, F.normalize(x, dim=1))
    assert np.allclose(out.z.norm(dim=1).numpy(), 1.0)

"""The perceptual term: only with a feature network the user supplies; otherwise off, with the reason."""

import pytest
import torch

from workbench.io_utils import InputError
from workbench.losses import CompositeLoss
from workbench.perceptual import PerceptualLoss


class Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv3d(4, 4, 3, padding=1, stride=2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return [h, torch.relu(self.b(h))]


@pytest.fixture
def feature_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(Features()), str(path))
    return path


def test_perceptual_loss_compares_features_and_trains_only_the_prediction(feature_file):
    loss = PerceptualLoss(feature_file)
    target = torch.rand(2, 1, 8, 8, 8)
    pred = target.clone().requires_grad_(True)
    assert float(loss(pred, target)) == 0.0
    pred2 = (target + 0.1 * torch.randn_like(target)).requires_grad_(True)
    value = loss(pred2, target)
    value.backward()
    assert float(value) > 0 and pred2.grad is not None
    assert all(p.grad is None for p in loss.net.parameters())
    total, terms = CompositeLoss({"l1": 1.0, "perceptual": 0.5}, terms={"perceptual": loss})(pred2, target)
    assert set(terms) == {"l1", "perceptual"} and terms["perceptual"] == pytest.approx(float(value), rel=1e-5)


def test_without_a_feature_network_the_term_is_refused_with_the_fix(tmp_path):
    with pytest.raises(InputError, match="TorchScript"):
        CompositeLoss({"perceptual": 1.0})(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4))
    with pytest.raises(InputError, match="not found"):
        PerceptualLoss(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="torch.jit.save"):
        PerceptualLoss(tmp_path / "junk.pt")


def test_sr_training_uses_the_users_feature_network(feature_file, tmp_path):
    from workbench.tasks import get_task
    from workbench.tasks.sr import workflow

    workflow.simulate(tmp_path / "pairs", kind="soil", scale=2, n=2, size=16, seed=0)
    pairs = workflow.load_training_pairs([tmp_path / "pairs"], (2, 2, 2))
    task = get_task("sr")
    cfg = task.default_config(scale=2, lr_patch=4)
    cfg.model.base_filters, cfg.model.options = 4, {"growth": 4, "num_blocks": 1}
    cfg.train.steps, cfg.train.val_every, cfg.data.batch_size = 2, 2, 1
    cfg.loss.weights = {**cfg.loss.weights, "perceptual": 0.1}
    assert "perceptual" in task.unavailable_terms(cfg)
    with pytest.raises(InputError, match="perceptual"):
        workflow.make_trainer(pairs, None, cfg)
    cfg.options = {**cfg.options, "perceptual_weights": str(feature_file)}
    assert "perceptual" not in task.unavailable_terms(cfg)
    result = workflow.make_trainer(pairs, None, cfg).fit()
    assert "perceptual" in result.history[-1]["terms"]

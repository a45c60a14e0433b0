"""Evaluator on the bundled task: accuracy under plans, caching, fine-tune with exact restore, determinism."""
import pytest
import torch

from autoq.common.errors import AutoQError, PlanError
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.evaluate import Evaluator, EvaluatorConfig
from autoq.host.quant.quantizer import QuantizedModel
from autoq.host.tasks import load_task


@pytest.fixture(scope="module")
def task():
    return load_task()


@pytest.fixture(scope="module")
def evaluator(task):
    return Evaluator.for_task(task)


def test_accuracy_follows_bits_and_eight_bits_matches_float(evaluator, task):
    full = evaluator.full_precision_accuracy()
    assert full > 0.9
    eight = evaluator.accuracy(QuantPlan.uniform(task.network, 8, 8))
    two = evaluator.accuracy(QuantPlan.uniform(task.network, 2, 2))
    assert abs(eight - full) <= 2 / len(task.val)
    assert two < full - 0.05
    assert 0.0 <= two <= 1.0
    test_full = evaluator.full_precision_accuracy(split="test")
    assert test_full > 0.9
    assert abs(evaluator.accuracy(QuantPlan.uniform(task.network, 8, 8), split="test") - test_full) <= 2 / len(task.test)


def test_val_selects_and_test_reports_on_disjoint_images(evaluator, task):
    """``accuracy`` (what the search calls) scores the val split; ``split="test"`` scores other images, cached apart."""
    val, test = evaluator.held_out["val"], evaluator.held_out["test"]
    assert val is task.val and test is task.test
    val_rows = {tuple(row) for row in val.x.flatten(1).tolist()}
    assert not any(tuple(row) in val_rows for row in test.x.flatten(1).tolist())
    plan = QuantPlan.uniform(task.network, 3, 2)
    on_val, on_test = evaluator.accuracy(plan), evaluator.accuracy(plan, split="test")
    count = evaluator.evaluations
    assert evaluator.accuracy(plan, split="val") == on_val and evaluator.accuracy(plan, split="test") == on_test
    assert evaluator.evaluations == count
    assert on_val == evaluator._score(val) and on_test == evaluator._score(test)


def test_correct_marks_each_image_and_agrees_with_accuracy(evaluator, task):
    """``correct`` (paired comparisons) marks every image of the split once; its mean is the accuracy."""
    wide, narrow = QuantPlan.uniform(task.network, 8, 8), QuantPlan.uniform(task.network, 2, 2)
    for split, images in (("test", task.test), ("val", task.val)):
        right = evaluator.correct(narrow, split)
        assert right.dtype == bool and right.shape == (len(images),)
        assert right.mean() == pytest.approx(evaluator.accuracy(narrow, split=split), abs=1e-12)
    assert (evaluator.correct(wide) != evaluator.correct(narrow)).sum() > 0.05 * len(task.test)
    with pytest.raises(AutoQError, match="no held-out split"):
        evaluator.correct(wide, "train")


def test_results_are_cached_by_plan_hash(evaluator, task):
    plan = QuantPlan.uniform(task.network, 5, 6)
    first = evaluator.accuracy(plan)
    count = evaluator.evaluations
    same_plan = QuantPlan.from_json(plan.to_json())  # an equal plan built anew hits the cache too
    assert evaluator.accuracy(same_plan) == first
    assert evaluator.evaluations == count
    evaluator.accuracy(plan.replace("fc", LayerPlan("fc", (5,) * 9 + (4,), 6)))
    assert evaluator.evaluations == count + 1


def test_finetune_restores_weights_bit_for_bit_and_is_deterministic(task):
    evaluator = Evaluator.for_task(load_task(), config=EvaluatorConfig(finetune_batch_size=16))
    model = evaluator.qmodel.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plan = QuantPlan.uniform(task.network, 2, 2)
    plain = evaluator.accuracy(plan)
    tuned = evaluator.accuracy(plan, finetune_steps=8)
    assert tuned != plain  # the fine-tune changed the model it measured
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.training
    assert evaluator.accuracy(plan) == plain  # the cached 0-step result is still what the weights give
    evaluator._cache.clear()
    assert evaluator.accuracy(plan) == plain
    assert evaluator.accuracy(plan, finetune_steps=8) == tuned  # same seed, same batches, same result


def test_bad_requests(evaluator, task):
    with pytest.raises(AutoQError, match="finetune_steps must be >= 0"):
        evaluator.accuracy(QuantPlan.uniform(task.network, 4, 4), finetune_steps=-1)
    wrong = QuantPlan(tuple(LayerPlan(l.name, (4,) * 3, 4) for l in task.network))
    with pytest.raises(PlanError, match="layer 'conv1': plan has 3 kernel bit-widths but the layer has 32"):
        evaluator.accuracy(wrong)
    fresh = load_task()
    with pytest.raises(AutoQError, match="not calibrated"):
        Evaluator(QuantizedModel(fresh.model, fresh.network), fresh.val, fresh.test)
    with pytest.raises(AutoQError, match="val split is empty"):
        Evaluator(evaluator.qmodel, task.val.subset(slice(0, 0)), task.test)
    with pytest.raises(AutoQError, match="test split is empty"):
        Evaluator(evaluator.qmodel, task.val, task.test.subset(slice(0, 0)))
    with pytest.raises(AutoQError, match="no held-out split 'train'"):
        evaluator.accuracy(QuantPlan.uniform(task.network, 4, 4), split="train")
    with pytest.raises(AutoQError, match="no held-out split 'calib'"):
        evaluator.full_precision_accuracy(split="calib")
    no_train = Evaluator(evaluator.qmodel, task.val, task.test)
    with pytest.raises(AutoQError, match="fine-tuning needs a train split"):
        no_train.accuracy(QuantPlan.uniform(task.network, 4, 4), finetune_steps=2)


def test_untrained_task_warns_and_is_flagged(evaluator):
    from autoq.host.evaluate import UntrainedWeightsWarning

    assert evaluator.trained is True  # the bundled task (its fixture raised no warning: pytest.ini shows them)
    with pytest.warns(UntrainedWeightsWarning, match="random, untrained weights"):
        flagged = Evaluator.for_task(load_task()._replace(trained=False))
    assert flagged.trained is False

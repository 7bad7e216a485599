"""The one model builder: a fine-tuning task without a checkpoint says it starts from random weights (a newcomer's
`bertkit squad --do_train` without --init_checkpoint trained a random BERT-large for minutes before that was clear);
pretraining from scratch, the normal case, is not warned about."""

from types import SimpleNamespace

import pytest

from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering
from bertkit.runtime.dist import DistEnv
from bertkit.train.build import build_model


@pytest.mark.parametrize("head, warned", [(BertForQuestionAnswering, True), (BertForPreTraining, False)])
def test_fine_tuning_from_random_weights_is_said(tiny_cfg, head, warned):
    cfg = SimpleNamespace(run=SimpleNamespace(resume=None), training=SimpleNamespace(seed=1, unpad=False, compile=False),
                          model=SimpleNamespace(model_load_dir=None, model_config=lambda: (tiny_cfg, "flags")))  # fmt: skip
    lines = []
    model, got, state = build_model(cfg, head, DistEnv(), lines.append)
    assert isinstance(model, head) and got is tiny_cfg and state is None
    warning = [x for x in lines if x.startswith("warning: no --init_checkpoint")]
    assert len(warning) == (1 if warned else 0), lines
    if warned:
        assert "random weights" in warning[0] and "2 layers, hidden 32" in warning[0]

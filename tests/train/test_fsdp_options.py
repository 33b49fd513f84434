"""train.distributed: the config field and what fsdp refuses (naming the setting) before any process group."""

import pytest

from mmdialog.errors import MMDialogError
from mmdialog.train.distributed import check_fsdp
from tests.train.conftest import smoke_config


def test_default_is_ddp_and_unknown_values_are_refused():
    assert smoke_config().train.distributed == "ddp"
    check_fsdp(smoke_config("train.distributed=fsdp", "train.optimizer=adamw").train, "fp32")
    with pytest.raises(MMDialogError, match="train.distributed must be ddp or fsdp"):
        check_fsdp(smoke_config("train.distributed=zero3").train, "fp32")


@pytest.mark.parametrize("override, precision, named", [
    ("train.strategy=lora", "fp32", "train.strategy=lora"),
    ("train.strategy=staged", "bf16", "train.strategy=staged"),
    ("train.strategy=full", "fp16", "train.precision=fp16"),
    ("train.optimizer=muon", "bf16", "train.optimizer=muon"),
])
def test_fsdp_refuses_what_it_does_not_support(override, precision, named):
    adamw = () if "optimizer" in override else ("train.optimizer=adamw",)
    tc = smoke_config("train.distributed=fsdp", *adamw, override).train
    with pytest.raises(MMDialogError, match=named):
        check_fsdp(tc, precision)
    check_fsdp(smoke_config(override).train, precision)  # ddp takes them

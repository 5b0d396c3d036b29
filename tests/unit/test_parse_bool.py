"""Issue 11: one parser for boolean strings, used by every place that reads one."""

from __future__ import annotations

import pytest
from inflight.config import parse_bool
from inflight.errors import ConfigError, InvalidRequestError
from inflight.frontends.triton.convert import sampling_from_json
from inflight.frontends.triton.metric_families import metrics_options
from inflight.frontends.triton.params import param_bool, trust_remote_code


@pytest.mark.parametrize("word, value", [
    ("true", True), ("TRUE", True), ("1", True), ("Yes", True), (" yes ", True),
    ("false", False), ("False", False), ("0", False), ("NO", False)])
def test_accepted_words(word: str, value: bool) -> None:
    assert parse_bool(word, "k", "src") is value


@pytest.mark.parametrize("word", ["", "on", "2", "truthy", "y"])
def test_anything_else_names_the_key_and_the_allowed_values(word: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_bool(word, "enable_kv_cache_reuse", "--set")
    assert str(e.value) == (f"--set enable_kv_cache_reuse={word}: expected true or false "
                            "(also 1/0, yes/no)")


def test_the_call_sites_share_it() -> None:
    assert param_bool({"skip_special_tokens": "No"}, "skip_special_tokens", True) is False
    assert param_bool({}, "add_special_tokens", True) is True
    assert trust_remote_code({"trust_remote_code": "YES", "allow_trust_remote_code": "1"})
    assert not trust_remote_code({"trust_remote_code": "true"})
    assert metrics_options({"REPORT_CUSTOM_METRICS": "Yes"}).vllm
    with pytest.raises(ConfigError, match="REPORT_CUSTOM_METRICS=maybe: expected true or false"):
        metrics_options({"REPORT_CUSTOM_METRICS": "maybe"})
    with pytest.raises(ConfigError, match="decoupled_mode=maybe"):
        param_bool({"decoupled_mode": "maybe"}, "decoupled_mode", True)
    assert sampling_from_json('{"ignore_eos": "yes"}').ignore_eos is True
    with pytest.raises(InvalidRequestError, match="^sampling_parameters.ignore_eos: must be bool"):
        sampling_from_json('{"ignore_eos": "maybe"}')

import pytest

from quantlib.core.errors import GateError
from quantlib.core.gates import Check, GateResult, enforce, gate_label


@pytest.mark.parametrize("name, label", [("audit", "audit gate"), ("sign_test_pre_opt", "sign_test_pre_opt gate"),
                                         ("meta_sign_test_gate", "meta_sign_test_gate"), ("completeness", "completeness gate")])
def test_gate_label_never_says_gate_twice(name, label):
    assert gate_label(name) == label


def test_enforce_names_the_gate_once_then_the_failed_checks_and_the_fix():
    failed = GateResult("meta_sign_test_gate", (Check("SIGN", False, "sleeve a: pre-opt sign test failed"),))
    with pytest.raises(GateError) as err:
        enforce(failed, fix="fix the sleeve")
    assert str(err.value).startswith("meta_sign_test_gate failed: ") and "gate gate" not in str(err.value)
    assert str(err.value).endswith("; fix the sleeve")
    passed = GateResult("audit", (Check("OK", True, "fine"),))
    assert enforce(passed, fix="-") is passed

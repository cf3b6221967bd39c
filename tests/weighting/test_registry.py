import pytest

from mtlkit.errors import ConfigError
from mtlkit.weighting import GradientBalancer, available, get, register
from mtlkit.weighting.methods.imtl import IMTLG


def test_unknown_name_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown balancer 'imtl_q'\. Did you mean .*'imtl_g'"):
        get("imtl_q")


def test_names_ignore_case_and_read_dashes_as_underscores():
    assert isinstance(get("IMTL-G"), IMTLG)


def test_unknown_option_names_the_accepted_options():
    with pytest.raises(ConfigError, match=r"'dwa' takes the options .*temperature"):
        get("dwa", tasks=2, temprature=2.0)


def test_a_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already taken by IMTLG"):

        @register("imtl_g")
        class Other(GradientBalancer):
            pass


def test_available_lists_the_loss_methods_and_imtl_variants():
    names = set(available())
    assert {"ew", "uw", "dwa", "rlw", "gls", "famo", "stch", "imtl_l", "imtl_g", "imtl", "imtl_h"} <= names


def test_available_without_aliases_lists_each_method_once_by_its_main_name():
    names = available(aliases=False)
    assert "ew" in names and "equal" not in names and "imtl" in names and "imtl_h" not in names
    assert len({type(get(n, tasks=2)) for n in names}) == len(names)

"""Selectors: glob by segment, '**', regex, type, predicate, lists, and no-match errors."""

from __future__ import annotations

import pytest
from reference_models import make_net
from torch import nn

import gradflow as gf


def names(selector):
    return [n for n, _ in gf.select_modules(make_net(), selector)]


def test_globs():
    assert names("blocks.*.cross") == ["blocks.0.cross", "blocks.1.cross", "blocks.2.cross"]
    assert names("**.inner") == ["blocks.0.cross.inner", "blocks.1.cross.inner", "blocks.2.cross.inner"]
    assert names("blocks.[02].body") == ["blocks.0.body", "blocks.2.body"]
    assert names("blocks.?.drop") == ["blocks.0.drop", "blocks.1.drop", "blocks.2.drop"]


def test_regex_type_predicate_and_list():
    assert names(r"re:blocks\.(0|1)\.adapter") == ["blocks.0.adapter", "blocks.1.adapter"]
    assert names(nn.Dropout) == ["blocks.0.drop", "blocks.1.drop", "blocks.2.drop"]
    assert names(lambda name, m: name.endswith("body") and name.startswith("blocks.1")) == ["blocks.1.body"]
    assert names(["head", "out"]) == ["head", "out"]


def test_shared_module_listed_once():
    net = make_net()
    net.alias = net.blocks[0].adapter
    selected = gf.select_modules(net, ["blocks.0.adapter", "alias"])
    assert [n for n, _ in selected] == ["blocks.0.adapter"]


def test_no_match_error_lists_close_names():
    with pytest.raises(gf.SelectorError, match="blocks.0.adapter"):
        names("blocks.*.adapters")
    with pytest.raises(gf.SelectorError, match="not a valid regular expression"):
        names("re:(")
    with pytest.raises(gf.SelectorError, match="not an nn.Module subclass"):
        names(int)
    with pytest.raises(gf.SelectorError, match="empty list"):
        names([])

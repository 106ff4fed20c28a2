"""The configuration file's validation: every problem is one line naming file, line, field, fix.

Each case was accepted before (the server started and answered 500 on every /v1 route,
or silently ignored the key) unless noted.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.config import ConfigError, ConfigFile, load_config, validate_config
from tests.aggregator.pricing_config import CONFIG_YAML

ROOT = Path(__file__).resolve().parents[2]
PRICE = 'per_million_tokens: {input: "1.00"}'


def _load(tmp_path: Path, text: str | bytes) -> ConfigFile:
    path = tmp_path / "meterline.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_public_api() -> None:
    import meterline.config

    assert sorted(meterline.config.__all__) == [
        "ConfigError", "ConfigFile", "Money", "Section", "field_path", "load_config",
        "validate_config",
    ]  # fmt: skip


# (file text, the one-line message after "<file>:")
BAD_FILES = [
    # a top-level typo: `model` for `models`
    ("model:\n  - provider: openai\n", r"1: model: unknown key `model`: did you mean `models`\?"),
    ("modles: []\n", r"1: modles: unknown key `modles`: did you mean `models`\?"),
    ("plan:\n  default: {}\n", r"1: plan: unknown key `plan`: did you mean `plans`\?"),
    ("currenc: EUR\n", r"1: currenc: unknown key `currenc`: did you mean `currency`\?"),
    ("zzz: 1\n", r"1: zzz: unknown key `zzz`: allowed: currency, models, plans, catalogue, stripe"),
    # nested unknown keys, at any depth
    (f"models:\n  - provider: openai\n    model: m\n    {PRICE}\n    efective_from: 2026-01-01\n",
     r"5: models\[0\].efective_from: unknown key `efective_from`: did you mean `effective_from`\?"),
    ("models:\n  - {provider: openai, model: m, per_million_tokens: {inptu: \"1\"}}\n",
     r"2: models\[0\].per_million_tokens.inptu: unknown key `inptu`: did you mean `input`\?"),
    ("plans:\n  consumers:\n    acme: {markup: \"5\"}\n",
     r"3: plans.consumers.acme.markup: unknown key `markup`: did you mean `markup_percent`\?"),
    ("plans:\n  defaults: {}\n", r"2: plans.defaults: unknown key `defaults`: did you mean `default`\?"),
    (f"models:\n  - provider: o\n    model: m\n    {PRICE}\n    tiers:\n      - above: 5\n",
     r"6: models\[0\].tiers\[0\].above: unknown key `above`: did you mean `above_input_tokens`\?"),
    # money: a float is refused because binary floats are not exact money
    ("models:\n  - provider: openai\n    model: m\n    per_million_tokens:\n      input: 2.5\n",
     r"5: models\[0\].per_million_tokens.input: 2.5 is a YAML float, and binary floats are not "
     r'exact money: quote it as a decimal string \("2.5"\)'),
    ('plans:\n  default: {markup_percent: 12.5}\n',
     r"2: plans.default.markup_percent: 12.5 is a YAML float, and binary floats are not exact"),
    ('models:\n  - {provider: o, model: m, per_million_tokens: {output: "-1"}}\n',
     r"2: models\[0\].per_million_tokens.output: '-1' must be a finite, non-negative amount"),
    ('models:\n  - {provider: o, model: m, per_million_tokens: {output: "NaN"}}\n',
     r"must be a finite, non-negative amount"),
    ('models:\n  - {provider: o, model: m, per_million_tokens: {output: "2,50"}}\n',
     r"output: '2,50' is not a decimal amount"),
    ('models:\n  - {provider: o, model: m, per_million_tokens: {output: true}}\n',
     r"output: expected an amount as a quoted decimal string"),
    ("models:\n  - {provider: o, model: m, per_million_tokens: {}}\n",
     r"2: models\[0\].per_million_tokens: give at least one price"),
    # money finer than the rated-usage table holds (24 decimals per million tokens,
    # 8 for markup_percent) is refused, never rounded
    (f'models:\n  - {{provider: o, model: m, per_million_tokens: {{input: "0.{"0" * 24}1"}}}}\n',
     r"2: models\[0\].per_million_tokens.input: 0.0{24}1 has 25 decimals; a price per million "
     r"tokens may have at most 24 .*: round it$"),
    (f'models:\n  - provider: o\n    model: m\n    {PRICE}\n    tiers:\n'
     f'      - above_input_tokens: 5\n        per_million_tokens:\n'
     f'          cache_write_1h: "3.{"3" * 30}"\n',
     r"8: models\[0\].tiers\[0\].per_million_tokens.cache_write_1h: 3.3{30} has 30 decimals"),
    ('models:\n  - {provider: o, model: m, per_million_tokens: {output: "1E-25"}}\n',
     r"output: 0.0{24}1 has 25 decimals"),
    # more significant digits than Decimal's default context (28): counted exactly
    (f'models:\n  - {{provider: o, model: m, per_million_tokens: {{output: "1.{"0" * 27}1"}}}}\n',
     r"output: 1.0{27}1 has 28 decimals"),
    ('plans:\n  default: {markup_percent: "12.123456789"}\n',
     r"2: plans.default.markup_percent: 12.123456789 has 9 decimals; markup_percent may have "
     r"at most 8"),
    ('plans:\n  consumers:\n    acme: {markup_percent: "0.000000001"}\n',
     r"3: plans.consumers.acme.markup_percent: 0.000000001 has 9 decimals"),
    # dates
    (f"models:\n  - {{provider: o, model: m, effective_from: soon, {PRICE}}}\n",
     r"2: models\[0\].effective_from: 'soon' is not a date \(YYYY-MM-DD\)"),
    (f"models:\n  - {{provider: o, model: m, effective_from: 2026-02-30, {PRICE}}}\n",
     r"models\[0\].effective_from: '2026-02-30' is not a date"),
    (f"models:\n  - {{provider: o, model: m, effective_from: 2300-01-01, {PRICE}}}\n",
     r"models\[0\].effective_from: 2300-01-01 is outside the times meterline can store"),
    # wrong types: nothing is coerced
    (f"models:\n  - {{provider: o, model: 4, {PRICE}}}\n",
     r"2: models\[0\].model: expected text, got 4: quote it"),
    (f"models:\n  - {{provider: 7, model: m, {PRICE}}}\n",
     r"models\[0\].provider: expected text, got 7: quote it"),
    ("plans:\n  consumers:\n    acme: {bill_failed_requests: \"yes\"}\n",
     r"3: plans.consumers.acme.bill_failed_requests: expected true or false, got 'yes'"),
    ("plans:\n  consumers:\n    123: {markup_percent: \"5\"}\n",
     r"plans.consumers.123: the key 123 must be text: quote it"),
    (f"models:\n  - {{provider: o, model: m, {PRICE}, tiers: [{{above_input_tokens: '5', {PRICE}}}]}}\n",
     r"models\[0\].tiers\[0\].above_input_tokens: expected a whole number, got '5'"),
    (f"models:\n  - {{provider: o, model: m, {PRICE}, tiers: [{{above_input_tokens: -1, {PRICE}}}]}}\n",
     r"models\[0\].tiers\[0\].above_input_tokens: must be at least 0, got -1"),
    ("models:\n  provider: openai\n", r"1: models: expected a list \(one `- ` entry per item\)"),
    ("plans: [acme]\n", r"1: plans: expected a mapping of default, consumers, got a list"),
    ("- currency: USD\n", r"1: the file: expected a mapping of currency, models, plans, catalogue, stripe, budgets, alerts, got a list"),
    ("just text\n", r"the file: expected a mapping of currency, models, plans, catalogue, stripe, budgets, alerts, got 'just text'"),
    ("currency: usd\n", r"1: currency: 'usd' is not an ISO 4217 code such as 'USD'"),
    ("currency: 840\n", r"1: currency: 840 is not an ISO 4217 code"),
    # entries
    (f"models:\n  - {{provider: o, {PRICE}}}\n",
     r"2: models\[0\]: give exactly one of `model` \(an exact id\) or `match`"),
    (f"models:\n  - {{provider: o, model: m, match: m, {PRICE}}}\n", r"give exactly one of `model`"),
    (f"models:\n  - {{model: m, {PRICE}}}\n", r"2: models\[0\].provider: required: add it"),
    ("models:\n  - {provider: o, model: m}\n", r"models\[0\].per_million_tokens: required: add it"),
    (f"models:\n  - {{provider: '', model: m, {PRICE}}}\n", r"models\[0\].provider: must not be empty"),
    (f"models:\n  - {{provider: o, match: '(', {PRICE}}}\n",
     r"2: models\[0\].match: invalid regular expression '\(': missing \)"),
    # budgets and rate limits: the aggregator's own checks, at load, not at first use
    ("budgets:\n  limits:\n    - {consumer: acme, limit: abc, unit: USD, period: month}\n",
     r"1: budgets: limits\[0\]: limit 'abc' is not a decimal number"),
    ("currency: EUR\nbudgets:\n  limits:\n    - {consumer: a, limit: '1', unit: USD, period: day}\n",
     r"2: budgets: limits\[0\]: unit 'USD' must be the pricing currency 'EUR' or 'tokens'"),
    ("budgets:\n  limits:\n    - {consumer: a, limit: '1', unit: USD, period: fortnight}\n",
     r"budgets: limits\[0\]: .*fortnight"),
    ("budgets:\n  timezone: Mars/Olympus\n  limits:\n    - {consumer: a, limit: '1', unit: USD, period: day}\n",
     r"budgets: limits\[0\]: timezone 'Mars/Olympus' is unknown"),
    ("budgets:\n  timezone: Mars/Olympus\n", r"1: budgets: timezone: .*Mars/Olympus"),
    ("budgets:\n  rate_limits:\n    - {consumer: a, limit: '5', unit: bogus, per: minute}\n",
     r"budgets: rate_limits\[0\]: unit 'bogus' must be"),
    # YAML itself
    ("models:\n  - provider: openai\n   model: m\n", r" not valid YAML: line 3, column \d+: "),
    ("currency: [USD\n", r" not valid YAML: line \d+, column \d+: "),
    ("models: []\nmodels:\n  - {provider: o, model: m}\n",
     r" not valid YAML: line 2, column 1: key 'models' is given twice \(first on line 1\): keep one"),
    ("plans:\n  consumers:\n    acme: {}\n    acme: {markup_percent: \"1\"}\n",
     r"line 4, column 5: key 'acme' is given twice \(first on line 3\)"),
    ("currency: USD\n---\ncurrency: EUR\n", r" not valid YAML: .*expected a single document"),
    (b"currency: \xff\xfe\n", r" not UTF-8 text \(byte 10\): save it as UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_every_problem_is_one_line_naming_file_line_field_and_fix(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(str(tmp_path / "meterline.yaml"))
    assert re.search(message, line), line


def test_several_problems_are_all_named(tmp_path: Path) -> None:
    text = "model: 1\nmodels:\n  - {provider: 1, model: m, per_million_tokens: {input: 2.5}}\n"
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert len(caught.value.problems) == 1  # an unknown top-level key stops there
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text.replace("model: 1\n", ""))
    error = caught.value
    assert [p.split(": ")[1] for p in error.problems] == [
        "models[0].provider", "models[0].per_million_tokens.input",
    ]  # fmt: skip
    assert str(error).endswith("(and 1 more: models[0].per_million_tokens.input)")


def test_missing_unreadable_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: no such file: check the --config path"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r": is a directory, not a configuration file"):
        load_config(tmp_path)


def test_valid_files_that_worked_before_still_do(tmp_path: Path) -> None:
    config = _load(tmp_path, CONFIG_YAML)
    assert len(config.models) == 4
    assert config.models[0].per_million_tokens.given() == {
        "input": Decimal("2.50"), "cache_read": Decimal("1.25"), "output": Decimal("10.00"),
    }  # fmt: skip
    # empty sections, an empty file, whole numbers as amounts, a consumer with no keys,
    # YAML merge keys and anchors
    assert _load(tmp_path, "").summary() == "currency USD, 0 model prices, 0 plans"
    finest = _load(  # the table's own scale is fine: 24 decimals, markup 8
        tmp_path,
        f'models:\n  - {{provider: o, model: m, per_million_tokens: {{input: "0.{"0" * 23}1"}}}}\n'
        'plans:\n  default: {markup_percent: "12.12345678"}\n',
    )
    assert finest.models[0].per_million_tokens.input == Decimal("1E-24")
    assert finest.plans is not None and finest.plans.default is not None
    assert finest.plans.default.markup_percent == Decimal("12.12345678")
    assert _load(tmp_path, "# prices come later\n") == ConfigFile()
    assert _load(tmp_path, "models:\nplans:\n") == ConfigFile()
    text = 'base: &base {provider: openai, per_million_tokens: {input: 2, output: "8"}}\n'
    with pytest.raises(ConfigError, match="unknown key `base`"):  # anchors live in known keys
        _load(tmp_path, text)
    merged = _load(
        tmp_path,
        "models:\n"
        '  - &gpt {provider: openai, model: gpt-4o, per_million_tokens: {input: 2, output: "8"}}\n'
        "  - {<<: *gpt, effective_from: 2026-03-16T12:00:00Z}\n"
        "plans:\n  default: {markup_percent: 10}\n  consumers: {acme: , beta: {}}\n",
    )
    assert merged.models[1].model == "gpt-4o"
    assert merged.models[1].per_million_tokens.input == Decimal(2)
    assert merged.models[1].effective_from.isoformat() == "2026-03-16T12:00:00+00:00"
    assert merged.plans.consumers == {"acme": None, "beta": merged.plans.consumers["beta"]}


def _yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("doc", ["docs/pricing.md", "README.md"])
def test_documented_examples_are_valid(tmp_path: Path, doc: str) -> None:
    blocks = [
        b for b in _yaml_blocks(ROOT / doc) if re.search(r"^(models|plans|currency):", b, re.M)
    ]
    if doc == "docs/pricing.md":
        assert blocks
    for block in blocks:
        _load(tmp_path, block)


def test_validate_config_without_a_file() -> None:
    with pytest.raises(ConfigError, match=r"^the configuration: model: unknown key"):
        validate_config({"model": []})
    assert validate_config(None) == ConfigFile()

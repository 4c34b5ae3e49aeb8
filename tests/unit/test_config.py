"""The mapping configuration: presets, the documented example, merging, validation errors, custom names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiktok_bridge.config import (
    PRESET_TRIGGERS,
    BridgeConfig,
    ConfigError,
    custom_event_name,
    load_config,
    load_config_file,
)
from tiktok_bridge.model import Route

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "mapping.example.yaml"
PII_EMAIL = "zelda.quixote.9931@pii-example.org"


def tiktok_event(config: BridgeConfig, event: str, event_type: str = "track") -> list[str]:
    return [rule.tiktok_event for rule in config.plan.rules_for(event_type, event)]


def test_defaults_are_the_spec_presets_for_web_only() -> None:
    config = BridgeConfig()
    assert set(config.triggers) == set(PRESET_TRIGGERS)
    assert config.route("web") == Route("web")
    assert config.route("offline") is None
    assert tiktok_event(config, "Order Completed") == ["Purchase"]
    assert tiktok_event(config, "Account Created") == ["CompleteRegistration"]
    assert tiktok_event(config, "Anything", "page") == ["Pageview"]
    assert tiktok_event(config, "order completed") == []  # names match exactly


def test_the_documented_example_is_the_defaults_written_out() -> None:
    assert load_config_file(EXAMPLE) == BridgeConfig()
    assert load_config("") == BridgeConfig()
    assert load_config("# only a comment\n") == BridgeConfig()


def test_yaml_and_json_give_the_same_config() -> None:
    yaml_text = "offline: {enabled: true, test_event_code: TEST123}\nlegacy_event_names: true\n"
    json_text = json.dumps(
        {"offline": {"enabled": True, "test_event_code": "TEST123"}, "legacy_event_names": True}
    )
    assert load_config(yaml_text) == load_config(json_text)
    config = load_config(json_text)
    assert config.route("offline") == Route("offline", "TEST123")
    assert tiktok_event(config, "Order Completed") == ["CompletePayment"]
    assert tiktok_event(config, "Form Submitted") == ["SubmitForm"]


def test_a_preset_is_changed_key_by_key_and_others_are_kept() -> None:
    config = load_config(
        """
triggers:
  order_completed: {tiktok_event: BigPurchase}
  page: {enabled: false}
  product_added: {destinations: [offline]}
"""
    )
    assert config.triggers["order_completed"].contents == "multi"  # kept from the preset
    assert tiktok_event(config, "Order Completed") == ["BigPurchase"]
    assert tiktok_event(config, "Home", "page") == []
    assert tiktok_event(config, "Product Added") == []  # offline is disabled
    assert tiktok_event(config, "Product Viewed") == ["ViewContent"]


def test_new_triggers_add_and_include_presets_false_removes_the_presets() -> None:
    text = """
include_presets: false
triggers:
  trial: {event: [Trial Started, Trial Begun], tiktok_event: StartTrial}
  pricing_page: {type: page, event: Pricing, tiktok_event: ViewContent}
"""
    config = load_config(text)
    assert set(config.triggers) == {"trial", "pricing_page"}
    assert tiktok_event(config, "Trial Begun") == ["StartTrial"]
    assert tiktok_event(config, "Pricing", "page") == ["ViewContent"]
    assert tiktok_event(config, "Home", "page") == []
    assert tiktok_event(config, "Order Completed") == []


def test_field_sources_replace_the_default_list() -> None:
    config = load_config("fields:\n  user.email: [properties.customer.mail, traits.email]\n")
    assert [path.text for path in config.plan.sources["user.email"]] == [
        "properties.customer.mail",
        "traits.email",
    ]
    assert [path.text for path in config.plan.sources["event_id"]] == ["messageId"]


def test_with_destinations_enables_exactly_those() -> None:
    config = load_config("web: {enabled: true, test_event_code: WEBTEST}\ntriggers: {page: {enabled: false}}")
    both = config.with_destinations(("web", "offline"))
    assert both.route("web") == Route("web", "WEBTEST")
    assert both.route("offline") == Route("offline")
    assert both.triggers == config.triggers
    assert config.with_destinations(("offline",)).route("web") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unknown_setting: 1", r"unknown_setting: Extra inputs are not permitted"),
        ("web: {enabled: true, colour: red}", r"web.colour: Extra inputs are not permitted"),
        ("web: {}", r"web.enabled: Field required"),
        ("web: {enabled: true, test_event_code: ''}", r"web.test_event_code: String should have at least 1"),
        ("legacy_event_names: sometimes", r"legacy_event_names: Input should be a valid boolean"),
        ("phone_default_region: XX", r"phone_default_region: .*not a phone region"),
        (
            "triggers: {order_completed: {tiktok_event: 'Big Purchase'}}",
            r"triggers.order_completed.tiktok_event",
        ),
        ("triggers: {order_completed: {contents: many}}", r"triggers.order_completed.contents"),
        ("triggers: {order_completed: {destinations: [tv]}}", r"triggers.order_completed.destinations.0"),
        ("triggers: {mine: {tiktok_event: Lead}}", r"triggers.mine: .*needs `event`"),
        ("triggers: {mine: {event: A}}", r"triggers.mine.tiktok_event: Field required"),
        ("triggers: {mine: {event: A, tiktok_event: X, extra: 1}}", r"triggers.mine.extra: Extra inputs"),
        (
            "triggers: {mine: {event: A, tiktok_event: X, where: [{path: a, equals: 1, exists: true}]}}",
            r"triggers.mine.where.0: .*exactly one of equals, in, exists",
        ),
        (
            "triggers: {mine: {event: A, tiktok_event: X, where: [{path: 'a..b', exists: true}]}}",
            r"where.0.path",
        ),
        ("fields: {user.emial: [traits.email]}", r"fields: .*unknown field 'user.emial'"),
        ("fields: {user.email: []}", r"fields: .*'user.email' needs at least one source path"),
        ("fields: {user.email: ['properties..email']}", r"fields: .*'user.email': a path is dot-separated"),
        ("fields: {user.email: properties.email}", r"fields.user.email: Input should be a valid list"),
        ("- just\n- a list", r"config must be a mapping"),
        ("web: [", r"config is not valid YAML \(.* at line 1\)"),
        ('{"web": ', r"config is not valid JSON"),
    ],
)
def test_validation_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(text)


@pytest.mark.parametrize(
    "text",
    [
        f"legacy_event_names: {PII_EMAIL}",
        f"web: {{enabled: true, test_event_code: [{PII_EMAIL}]}}",
        f"phone_default_region: {PII_EMAIL}",
        f"triggers: {{order_completed: {{tiktok_event: '{PII_EMAIL}'}}}}",
        f"triggers: {{mine: {{event: A, tiktok_event: X, where: [{{path: a, equals: [{PII_EMAIL}]}}]}}}}",
        f"web: {{enabled: true}}\n  bad: indentation {PII_EMAIL}",
    ],
)
def test_validation_errors_never_echo_values(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert PII_EMAIL not in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.yaml"):
        load_config_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("segment_name", "expected"),
    [
        ("Coupon Applied", "Coupon_Applied"),
        ("video-played", "video-played"),
        ("  Cart:Viewed!! ", "Cart_Viewed"),
        ("3D Model Rotated", "D_Model_Rotated"),
        ("Purchase", "Custom_Purchase"),
        ("pageview", "Custom_pageview"),
        ("Ünïcode Évent", "Unicode_Event"),
        ("注文 Completed", "Completed"),
        ("A" * 80, "A" * 50),
        ("123 !!!", None),
        ("", None),
    ],
)
def test_custom_event_names_follow_tiktok_rules(segment_name: str, expected: str | None) -> None:
    assert custom_event_name(segment_name) == expected

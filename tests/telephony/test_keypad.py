"""The keypad state machine: menu choices, digit entries ended by the terminator, by length
and by a timeout, retries, stray keys; no call, no clock of its own."""

from __future__ import annotations

from worker.agent.keypad import Collected, Keypad, Say, Transfer
from worker.config.flows import Flow

FLOW = Flow.model_validate(
    {
        "name": "shop",
        "default": True,
        "menu_prompt": "Press 1 for opening hours, 2 for your order, 0 for a person.",
        "menu": {
            "1": {"say": "We are open Monday to Friday."},
            "2": {"collect": "order"},
            "0": {"transfer": True},
        },
        "collect": {
            "order": {
                "prompt": "Please enter your six digit order number.",
                "label": "order number",
                "min_digits": 6,
                "max_digits": 6,
                "timeout_s": 5,
            }
        },
        "transfer": {"target": "desk", "key": "0"},
    }
)


def test_menu_choice_says_its_branch() -> None:
    assert Keypad(FLOW).press("1", 0.0) == [Say("We are open Monday to Friday.")]


def test_transfer_key_asks_for_a_person() -> None:
    assert Keypad(FLOW).press("0", 0.0) == [Transfer("0")]


def test_unknown_key_repeats_the_menu() -> None:
    (action,) = Keypad(FLOW).press("7", 0.0)
    assert isinstance(action, Say) and "7 is not an option" in action.text
    assert FLOW.menu_prompt is not None and action.text.endswith(FLOW.menu_prompt)


def test_digits_collected_at_max_length() -> None:
    pad = Keypad(FLOW)
    assert pad.press("2", 0.0) == [Say("Please enter your six digit order number.")]
    assert pad.collecting == "order"
    out = [a for i, k in enumerate("123456") for a in pad.press(k, 1.0 + i)]
    assert out == [
        Collected(
            "order", "order number", "123456", "Thank you. I have your order number: 1 2 3 4 5 6."
        )
    ]
    assert pad.collecting is None and pad.deadline is None


def test_terminator_ends_an_entry_and_too_few_digits_are_asked_again() -> None:
    pad = Keypad(FLOW)
    pad.press("2", 0.0)
    for k in "123":
        assert pad.press(k, 1.0) == []
    (retry,) = pad.press("#", 2.0)
    assert isinstance(retry, Say) and retry.text.startswith("Sorry, I didn't get that.")
    assert pad.collecting == "order"  # second attempt
    for k in "654321":
        out = pad.press(k, 3.0)
    assert out and isinstance(out[0], Collected) and out[0].digits == "654321"


def test_timeout_ends_an_entry_and_gives_up_after_the_last_attempt() -> None:
    pad = Keypad(FLOW)
    pad.press("2", 0.0)
    pad.press("9", 1.0)
    assert pad.deadline == 6.0
    assert pad.tick(5.9) == []
    (retry,) = pad.tick(6.0)
    assert isinstance(retry, Say) and "Sorry" in retry.text
    (give_up,) = pad.tick(6.0 + 5.0)
    assert isinstance(give_up, Say) and "go on without it" in give_up.text
    assert pad.collecting is None
    # Back in the menu: keys are menu choices again.
    assert pad.press("1", 20.0) == [Say("We are open Monday to Friday.")]


def test_keys_while_collecting_are_digits_not_menu_choices() -> None:
    pad = Keypad(FLOW)
    pad.press("2", 0.0)
    assert pad.press("0", 1.0) == []  # a zero in an order number, not a transfer


def test_flow_without_menu_ignores_stray_keys_but_keeps_the_transfer_key() -> None:
    flow = Flow.model_validate(
        {"name": "plain", "default": True, "transfer": {"target": "desk", "key": "0"}}
    )
    pad = Keypad(flow)
    assert pad.press("5", 0.0) == []
    assert pad.press("0", 0.0) == [Transfer("0")]
    assert pad.press("A", 0.0) == []

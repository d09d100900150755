"""Asks the user whether a tool call may run: allow once, always allow a rule, or deny."""

from __future__ import annotations

from typing import Literal, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from agent.events import ApprovalDecision, ApprovalRequested
from tui.formatting import args_summary, pretty_args

Decision = Literal["allow", "always", "deny"]


class ApprovalScreen(ModalScreen[ApprovalDecision | None]):
    """The answer to one ApprovalRequested, returned through `dismiss`.

    "Always" sends the rule as shown in the (editable) rule field; Esc denies. The app dismisses
    with None when the request is withdrawn (the turn ended first): nothing is sent then.
    """

    CSS_PATH = "approval.tcss"

    BINDINGS = [
        Binding("y", "decide('allow')", "allow once"),
        Binding("a", "decide('always')", "always allow"),
        Binding("n,escape", "decide('deny')", "deny"),
    ]

    def __init__(self, request: ApprovalRequested) -> None:
        super().__init__()
        self.request = request

    def compose(self) -> ComposeResult:
        request = self.request
        with Vertical(id="dialog"):
            yield Label(Content.assemble("Allow ", (request.name, "bold"), " to run?"), id="title")
            yield Label(Content(args_summary(request.name, request.args, 70)), id="summary")
            with VerticalScroll(id="args"):
                yield Static(Content(pretty_args(request.args)))
            with Horizontal(id="buttons"):
                yield Button("Allow once (y)", id="allow", variant="success")
                yield Button("Always allow (a)", id="always", variant="primary")
                yield Button("Deny (n)", id="deny", variant="error")
            yield Label("Always allow calls matching (editable, enter to accept):", id="rule-label")
            yield Input(request.suggested_rule or request.name, id="rule")

    def on_mount(self) -> None:
        # Focus the safe, common answer so enter means "allow once", not "always".
        self.query_one("#allow", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_decide(cast(Decision, event.button.id))

    @on(Input.Submitted, "#rule")
    def _rule_submitted(self) -> None:
        self.action_decide("always")

    def action_decide(self, decision: Decision) -> None:
        rule = None
        if decision == "always":
            rule = self.query_one("#rule", Input).value.strip() or None
        self.dismiss(ApprovalDecision(self.request.call_id, decision, rule))

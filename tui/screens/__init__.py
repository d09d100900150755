"""Screens, one per file, each with a sibling .tcss.

Files:
- main.py: MainScreen, the conversation: applies agent events, sends prompts.
- approval.py: ApprovalScreen, allow once / always allow a rule / deny a tool call.
- session_picker.py: SessionPickerScreen, resume / fork / delete saved sessions.
- rewind.py: RewindScreen, pick the turn to go back to.
- help.py: HelpScreen, every key and command.
"""

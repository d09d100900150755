"""The agent: the loop, the context layout, tool-call parsing, tools, permissions, the CLI.

Files:
- cli.py: the `agent` command and its subcommands.
"""

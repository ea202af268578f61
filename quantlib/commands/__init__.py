"""The command line's commands that inspect runs (audit-lookahead, replay, compare, verify, diff, runs,
show): `quantlib.cli` names each as a "module:function" string and imports it only when it runs, so
`run_book.py --help`, `runs` and `show` do not pay for scipy and the walk-forward (`cli.COMMANDS`)."""

"""The command line's commands, one module per group (phases, audit, records, listing, cluster):
`quantlib.cli` names each as a "module:function" string (`set_defaults(func=...)`) and imports it only
when it runs, so `run_book.py --help`, `runs` and `show` do not pay for scipy and the walk-forward."""

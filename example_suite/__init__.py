"""A complete, offline release gate for a behaviour-cloned retail support agent.

Run it with ``pytest example_suite --bclone-dataset=v8``; see ``README.md`` beside this file.
"""

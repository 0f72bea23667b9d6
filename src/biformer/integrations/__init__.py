"""Integrations of the BRA layers into other libraries' model builders.

Each integration is an optional extra and lives in its own subpackage; nothing in ``biformer``
imports them (only the command line does, for its commands):

- ``biformer.integrations.ultralytics``: BRA layers and blocks in ultralytics YOLO model YAMLs
  (extra ``yolo``).
"""

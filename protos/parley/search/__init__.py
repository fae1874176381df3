"""Generated from protos/: do not edit; run scripts/gen_protos.py."""

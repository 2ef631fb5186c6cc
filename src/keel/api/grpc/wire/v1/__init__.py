"""Generated from proto/ by scripts/generate-proto.sh; do not edit."""

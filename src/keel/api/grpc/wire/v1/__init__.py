"""Generated from contracts/proto/ by scripts/generate-proto.sh; do not edit."""

"""Capacity planning (docs/capacity.md): `keel capacity measure` ramps open-loop load against a
deployment and finds its knee; `keel capacity plan` sizes a fleet from what was measured."""

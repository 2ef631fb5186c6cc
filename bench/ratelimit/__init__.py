"""The rate-limit and load-shedding scenarios, one module each, and what they share
(shared.py); `python bench/ratelimit_scenarios.py` runs them."""

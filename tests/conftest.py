"""Project-wide test settings.

Hypothesis: no deadline (the first call of a Numba kernel compiles it, which takes seconds), and a
modest number of examples per test so the whole suite stays within a few minutes on 2 cores. Under CI
(env CI=true) examples are derandomized, so a red CI run is reproducible; locally every run explores
new inputs. Choose a profile with HYPOTHESIS_PROFILE=thorough for a longer hunt.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

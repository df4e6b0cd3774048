"""Features are SQL: feature sets (catalog), their computation (engine), the versioned table (store), checks.

Callers use this package's names (`features.build(...)`); the modules below hold one idea each:
- catalog: feature-set YAML and SQL family files, parsed and checked statically;
- engine: one set computed over one series (filters, rolling columns, family SQL, targets);
- store: the versioned feature table, built once per SQL hash and bars fingerprint, loaded as arrays;
- check: statistics, collinearity and the point-in-time checks (truncated bars, truncated raw bars).
"""

from nqexp.features.catalog import (
                                    FLAG_ROLL,
                                    FLAG_SESSION,
                                    FLAG_WEEKEND,
                                    FeatureSet,
                                    feature_set,
                                    list_sets,
                                    resolve_set,
)
from nqexp.features.check import check, leakage_check, point_in_time_check
from nqexp.features.engine import Computed, compute, compute_chunks, recursive_filter, rolling
from nqexp.features.store import BuildReport, FeatureArrays, build, load_arrays

__all__ = ["FLAG_ROLL", "FLAG_SESSION", "FLAG_WEEKEND", "BuildReport", "Computed", "FeatureArrays", "FeatureSet",
           "build", "check", "compute", "compute_chunks", "feature_set", "leakage_check",
           "list_sets", "load_arrays", "point_in_time_check", "recursive_filter", "resolve_set", "rolling"]

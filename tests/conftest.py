"""Shared test settings: no progress bars anywhere under test (the engine reads
$CAIT_EDU_NO_PROGRESS; notebook kernels started by nbval inherit it)."""
import os

os.environ["CAIT_EDU_NO_PROGRESS"] = "1"

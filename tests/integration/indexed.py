"""The app's functions, indexed once per process as the host does (indexing twice fails)."""

from __future__ import annotations

from typing import Any

import function_app

FUNCTIONS: dict[str, Any] = {fn.get_function_name(): fn for fn in function_app.app.get_functions()}

"""The Azure Functions entry point (Python v2 model): wiring only, no logic, no settings read."""

import azure.functions as func

from gigafactory.azure.http import http_app
from gigafactory.azure.telemetry import configure_telemetry
from gigafactory.azure.triggers import bp

configure_telemetry()

app = func.AsgiFunctionApp(app=http_app(), http_auth_level=func.AuthLevel.FUNCTION, function_name="http_app")
app.register_functions(bp)

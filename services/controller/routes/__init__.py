"""One router per resource; each route parses, calls one function of services.controller.logic,
and shapes the answer."""

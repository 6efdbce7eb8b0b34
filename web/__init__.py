"""The portal, the customer API and the vendor console (FastAPI), on the one job handler."""

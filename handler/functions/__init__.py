"""The Azure Functions custom-handler protocol: the FastAPI app the host starts and the envelope it sends."""

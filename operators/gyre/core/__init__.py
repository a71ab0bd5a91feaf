"""Pure data shared by the API, the builders and the runtimes; imports nothing heavy."""

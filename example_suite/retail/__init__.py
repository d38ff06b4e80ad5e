"""The retail customer-support domain of the example gate.

``db`` (the store), ``tools`` (OpenAI tools per dataset version), ``env`` (tool execution and the
end-state check), ``policy.md`` (the written policy), ``expert`` (the scripted expert policy),
``user`` (tasks and the scripted customer) and ``clone`` (the behaviour-cloned clone).
"""

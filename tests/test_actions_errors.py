"""Plans for 500 errors and LLM errors: pure parts (no target needed)."""

from paracle_nb.actions_errors import llm_env_changes, next_patch_image
from paracle_nb.findings import Finding, Severity


def _finding(cause, provider, healthy):
    return Finding(cause, Severity.CRITICAL, "", {"provider": provider,
                                                  "healthy_providers": healthy})


def test_next_patch_image():
    assert next_patch_image("registry.example.invalid/paracle-api:v1.0.3") == \
        "registry.example.invalid/paracle-api:v1.0.4"
    assert next_patch_image("paracle-api:2.9") == "paracle-api:2.10"
    assert next_patch_image("paracle-api:latest") == "paracle-api:<patched-tag>"


def test_rate_limit_switches_the_default_to_a_healthy_provider():
    changes = llm_env_changes([_finding("llm-rate-limited", "openai",
                                        ["anthropic"])],
                              {"DEFAULT_LLM_PROVIDER": "openai"}, "50")
    assert changes == {"LLM_RATE_LIMIT": "50", "DEFAULT_LLM_PROVIDER": "anthropic",
                       "FALLBACK_PROVIDERS": "anthropic,openai"}


def test_failing_fallback_provider_leaves_the_default_alone():
    changes = llm_env_changes([_finding("llm-provider-outage", "anthropic",
                                        ["openai"])],
                              {"DEFAULT_LLM_PROVIDER": "openai",
                               "FALLBACK_PROVIDERS": "anthropic,gemini"}, "50")
    assert changes == {"FALLBACK_PROVIDERS": "openai,gemini,anthropic"}


def test_no_healthy_provider_no_switch():
    changes = llm_env_changes([_finding("llm-invalid-key", "openai", [])],
                              {"DEFAULT_LLM_PROVIDER": "openai"}, "50")
    assert changes == {}

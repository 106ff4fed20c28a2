# ruff: noqa: E501  (frozen SQL, kept byte for byte as it was applied)
"""The ``llm_usage`` schema and view of migrations 1-3, frozen as they were applied.

A migration's SQL never changes once released: a database made by an older version
replays exactly these statements before migration 4 converts them
(:mod:`meterline.store.usage_schema` holds the current ones). Do not edit.
"""

V1_USAGE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.llm_usage (
    Timestamp DateTime64(9),
    ConsumerId LowCardinality(String),
    Feature LowCardinality(String),
    ServiceName LowCardinality(String),
    Provider LowCardinality(String),
    Operation LowCardinality(String),
    RequestModel LowCardinality(String),
    ResponseModel LowCardinality(String),
    ResponseId String,
    TraceId String,
    SpanId String,
    StatusCode LowCardinality(String),
    ErrorType LowCardinality(String),
    HttpStatus UInt16,
    Billable UInt8,
    Streamed UInt8,
    Estimated UInt8,
    InputTokens UInt64,
    OutputTokens UInt64,
    CacheReadInputTokens UInt64,
    CacheCreationInputTokens UInt64,
    CacheCreation1hInputTokens UInt64,
    ReasoningOutputTokens UInt64,
    DedupKey String,
    Version UInt8
) ENGINE = ReplacingMergeTree(Version)
PARTITION BY toYYYYMM(Timestamp)
ORDER BY (ConsumerId, DedupKey)
"""
"""``llm_usage`` of migration 1: ``Version UInt8`` (scope, exactness), monthly partitions."""

V3_USAGE_MV_QUERY = """
SELECT
    Timestamp,
    if(SpanAttributes['meterline.consumer.id'] != '', SpanAttributes['meterline.consumer.id'], ResourceAttributes['meterline.consumer.id']) AS ConsumerId,
    if(SpanAttributes['meterline.feature'] != '', SpanAttributes['meterline.feature'], ResourceAttributes['meterline.feature']) AS Feature,
    ServiceName,
    if(SpanAttributes['gen_ai.provider.name'] != '', SpanAttributes['gen_ai.provider.name'], if(SpanAttributes['gen_ai.system'] != '', SpanAttributes['gen_ai.system'], if(ResourceAttributes['gen_ai.provider.name'] != '', ResourceAttributes['gen_ai.provider.name'], ResourceAttributes['gen_ai.system']))) AS Provider,
    SpanAttributes['gen_ai.operation.name'] AS Operation,
    SpanAttributes['gen_ai.request.model'] AS RequestModel,
    if(SpanAttributes['gen_ai.response.model'] != '', SpanAttributes['gen_ai.response.model'], SpanAttributes['gen_ai.request.model']) AS ResponseModel,
    SpanAttributes['gen_ai.response.id'] AS ResponseId,
    TraceId,
    SpanId,
    StatusCode,
    SpanAttributes['error.type'] AS ErrorType,
    toUInt16OrZero(if(SpanAttributes['http.response.status_code'] != '', SpanAttributes['http.response.status_code'], SpanAttributes['http.status_code'])) AS HttpStatus,
    toUInt8(StatusCode != 'STATUS_CODE_ERROR' AND ErrorType = ''
            AND (HttpStatus = 0 OR HttpStatus < 400)) AS Billable,
    toUInt8(if(SpanAttributes['meterline.request.stream'] != '', SpanAttributes['meterline.request.stream'], if(SpanAttributes['gen_ai.request.stream'] != '', SpanAttributes['gen_ai.request.stream'], if(SpanAttributes['gen_ai.request.is_stream'] != '', SpanAttributes['gen_ai.request.is_stream'], SpanAttributes['llm.is_streaming']))) IN ('true', 'True', 'TRUE', '1')) AS Streamed,
    toUInt8(SpanAttributes['meterline.usage.estimated'] IN ('true', 'True', 'TRUE', '1')) AS Estimated,
    toUInt64OrZero(if(SpanAttributes['gen_ai.usage.input_tokens'] != '', SpanAttributes['gen_ai.usage.input_tokens'], SpanAttributes['gen_ai.usage.prompt_tokens'])) AS InputTokens,
    toUInt64OrZero(if(SpanAttributes['gen_ai.usage.output_tokens'] != '', SpanAttributes['gen_ai.usage.output_tokens'], SpanAttributes['gen_ai.usage.completion_tokens'])) AS OutputTokens,
    toUInt64OrZero(SpanAttributes['gen_ai.usage.cache_read.input_tokens']) AS CacheReadInputTokens,
    toUInt64OrZero(if(SpanAttributes['gen_ai.usage.cache_creation.input_tokens'] != '', SpanAttributes['gen_ai.usage.cache_creation.input_tokens'], SpanAttributes['gen_ai.usage.cache_write.input_tokens']))
        AS CacheCreationInputTokens,
    toUInt64OrZero(SpanAttributes['meterline.usage.cache_creation_1h.input_tokens']) AS CacheCreation1hInputTokens,
    toUInt64OrZero(SpanAttributes['gen_ai.usage.reasoning.output_tokens']) AS ReasoningOutputTokens,
    if(ResponseId != '', concat(Provider, '/', ResponseId), concat(TraceId, '/', SpanId))
        AS DedupKey,
    -- Which report of a response wins: meterline's own span, then exact over estimated.
    toUInt8((ScopeName = 'meterline.instrumentation') * 2 + (1 - Estimated)) AS Version
FROM {db}.otel_traces
WHERE (mapContains(SpanAttributes, 'gen_ai.usage.input_tokens') OR mapContains(SpanAttributes, 'gen_ai.usage.prompt_tokens') OR mapContains(SpanAttributes, 'gen_ai.usage.output_tokens') OR mapContains(SpanAttributes, 'gen_ai.usage.completion_tokens')
       OR ((StatusCode = 'STATUS_CODE_ERROR' OR mapContains(SpanAttributes, 'error.type'))
           AND (mapContains(SpanAttributes, 'gen_ai.provider.name') OR mapContains(SpanAttributes, 'gen_ai.system'))))
  AND SpanAttributes['gen_ai.operation.name'] NOT IN ('invoke_agent', 'create_agent', 'execute_tool', 'invoke_workflow')
  AND SpanAttributes['meterline.superseded'] NOT IN ('true', 'True', 'TRUE', '1')
"""
"""The view's query of migrations 1 and 3 (tokens read with ``toUInt64OrZero``)."""

V3_USAGE_MV_DDL = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.llm_usage_mv TO {db}.llm_usage AS"
    + V3_USAGE_MV_QUERY
)

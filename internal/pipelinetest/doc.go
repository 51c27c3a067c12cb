// Package pipelinetest holds the tests of redispool's AutoPipeline against
// a real redis-server, as external tests of the public API.
package pipelinetest

package redispool

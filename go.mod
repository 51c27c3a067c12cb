module github.com/redispool/redispool

go 1.24

require github.com/gomodule/redigo v1.9.3

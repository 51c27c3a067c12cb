module github.com/redispool/redispool/examples

go 1.24

require (
	github.com/alicebob/miniredis/v2 v2.40.0
	github.com/boj/redistore v1.4.1
	github.com/gomodule/redigo v1.9.3
	github.com/gorilla/sessions v1.4.0
	github.com/redispool/redispool v0.0.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/gorilla/securecookie v1.1.2 // indirect
	github.com/yuin/gopher-lua v1.1.1 // indirect
)

replace github.com/redispool/redispool => ../

package redispoolotel_test

import (
	"context"
	"fmt"
	"log"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/examples/redispoolotel"
)

// Register a pool with a MeterProvider; here the SDK's with a reader that
// collects on demand, where a program would pass its exporting provider
// (or otel.GetMeterProvider()). No connection is made until the first Get.
func ExampleRegister() {
	pool := &redispool.Pool{Addr: "localhost:6379", MaxActive: 8, MaxIdle: 4}
	defer pool.Close()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	reg, err := redispoolotel.Register(pool, mp, redispoolotel.WithPoolName("sessions"))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Unregister()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	values := map[string]int64{}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok && len(sum.DataPoints) == 1 {
			values[m.Name] = sum.DataPoints[0].Value
		}
	}
	fmt.Println("db.client.connection.max", values["db.client.connection.max"])
	fmt.Println("db.client.connection.idle.max", values["db.client.connection.idle.max"])
	fmt.Println("redispool.dials", values["redispool.dials"])
	// Output:
	// db.client.connection.max 8
	// db.client.connection.idle.max 4
	// redispool.dials 0
}

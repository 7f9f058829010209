// Conformance functions written with the official StateFun Go SDK
// (github.com/apache/flink-statefun/statefun-sdk-go/v3 v3.3.0), served with net/http.
// The contract is in conformance/README.md.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/apache/flink-statefun/statefun-sdk-go/v3/pkg/statefun"
)

const ns = "go"

var (
	outEgress      = statefun.TypeNameFrom("conformance/out")
	outTopic       = mustEnv("CONFORMANCE_OUT_TOPIC")
	greetingsTopic = mustEnv("CONFORMANCE_GREETINGS_TOPIC")

	commandType = statefun.MakeJsonType(statefun.TypeNameFrom("conformance/Command"))
	profileType = statefun.MakeJsonType(statefun.TypeNameFrom("conformance/Profile"))
	loginType   = statefun.MakeJsonType(statefun.TypeNameFrom("conformance/Login"))
	visitType   = statefun.MakeJsonType(statefun.TypeNameFrom("conformance/Visit"))
)

func mustEnv(name string) string {
	value := os.Getenv(name)
	if value == "" {
		log.Fatalf("%s is not set", name)
	}
	return value
}

// kind describes one of the value kinds of the contract: its SDK type and how a value moves
// between JSON (in commands and reports; longs as decimal strings) and the SDK.
type kind struct {
	name  string
	typ   statefun.SimpleType
	state statefun.ValueSpec
	// fromJSON turns a command's JSON value into what the SDK serializes.
	fromJSON func(json.RawMessage) (interface{}, error)
	// read decodes a stored or received value (via the given decode function) into a JSON value.
	read func(decode func(receiver interface{}) error) (interface{}, error)
}

func primitive[T any](name string, typ statefun.SimpleType, toJSON func(T) interface{}, parse func(json.RawMessage) (T, error)) kind {
	return kind{
		name:  name,
		typ:   typ,
		state: statefun.ValueSpec{Name: "a_" + name, ValueType: typ},
		fromJSON: func(raw json.RawMessage) (interface{}, error) {
			v, err := parse(raw)
			return v, err
		},
		read: func(decode func(interface{}) error) (interface{}, error) {
			var v T
			if err := decode(&v); err != nil {
				return nil, err
			}
			return toJSON(v), nil
		},
	}
}

func plain[T any](raw json.RawMessage) (T, error) {
	var v T
	err := json.Unmarshal(raw, &v)
	return v, err
}

func same[T any](v T) interface{} { return v }

var kinds = []kind{
	primitive("bool", statefun.BoolType, same[bool], plain[bool]),
	primitive("int", statefun.Int32Type, same[int32], plain[int32]),
	primitive("long", statefun.Int64Type,
		func(v int64) interface{} { return strconv.FormatInt(v, 10) },
		func(raw json.RawMessage) (int64, error) {
			s, err := plain[string](raw)
			if err != nil {
				return 0, err
			}
			return strconv.ParseInt(s, 10, 64)
		}),
	primitive("float", statefun.Float32Type, same[float32], plain[float32]),
	primitive("double", statefun.Float64Type, same[float64], plain[float64]),
	primitive("string", statefun.StringType, same[string], plain[string]),
	primitive("json", profileType, same[interface{}], plain[interface{}]),
}

func kindNamed(name string) (kind, error) {
	for _, k := range kinds {
		if k.name == name {
			return k, nil
		}
	}
	return kind{}, fmt.Errorf("unknown kind %q", name)
}

var (
	ttlWrite = statefun.ValueSpec{Name: "ttl_write", ValueType: statefun.Int32Type, Expiration: statefun.ExpireAfterWrite(2 * time.Second)}
	ttlCall  = statefun.ValueSpec{Name: "ttl_call", ValueType: statefun.Int32Type, Expiration: statefun.ExpireAfterCall(2 * time.Second)}
	seen     = statefun.ValueSpec{Name: "seen", ValueType: statefun.Int32Type}
)

func addressText(a *statefun.Address) interface{} {
	if a == nil {
		return nil
	}
	return fmt.Sprintf("%s/%s", a.FunctionType.String(), a.Id)
}

func report(ctx statefun.Context, body map[string]interface{}) {
	value, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	ctx.SendEgress(statefun.KafkaEgressBuilder{
		Target: outEgress,
		Topic:  outTopic,
		Key:    fmt.Sprintf("%s:%s", ns, ctx.Self().Id),
		Value:  string(value),
	})
}

type command struct {
	Op     string                     `json:"op"`
	N      *int                       `json:"n"`
	Values map[string]json.RawMessage `json:"values"`
	Ms     int64                      `json:"ms"`
	Tag    string                     `json:"tag"`
	Token  *string                    `json:"token"`
	To     string                     `json:"to"`
	ID     string                     `json:"id"`
	Kind   string                     `json:"kind"`
	Value  json.RawMessage            `json:"value"`
}

func storedOrNil(storage statefun.AddressScopedStorage, spec statefun.ValueSpec, k kind) (interface{}, error) {
	var present bool
	value, err := k.read(func(receiver interface{}) error {
		present = storage.Get(spec, receiver)
		return nil
	})
	if !present {
		return nil, err
	}
	return value, err
}

func onCommand(ctx statefun.Context, cmd command) error {
	out := map[string]interface{}{"op": cmd.Op, "n": cmd.N}
	storage := ctx.Storage()
	switch cmd.Op {
	case "set":
		for _, k := range kinds {
			v, err := k.fromJSON(cmd.Values[k.name])
			if err != nil {
				return fmt.Errorf("set %s: %w", k.name, err)
			}
			storage.Set(k.state, v)
		}
	case "get":
		values := map[string]interface{}{}
		for _, k := range kinds {
			v, err := storedOrNil(storage, k.state, k)
			if err != nil {
				return err
			}
			values[k.name] = v
		}
		out["values"] = values
	case "clear":
		for _, k := range kinds {
			storage.Remove(k.state)
		}
	case "ttl-set":
		storage.Set(ttlWrite, int32(1))
		storage.Set(ttlCall, int32(1))
	case "ttl-get":
		intKind, _ := kindNamed("int")
		var err error
		if out["write"], err = storedOrNil(storage, ttlWrite, intKind); err != nil {
			return err
		}
		if out["call"], err = storedOrNil(storage, ttlCall, intKind); err != nil {
			return err
		}
	case "delay":
		msg := statefun.MessageBuilder{Target: ctx.Self(), Value: "fired:" + cmd.Tag}
		delay := time.Duration(cmd.Ms) * time.Millisecond
		if cmd.Token != nil {
			token, err := statefun.NewCancellationToken(*cmd.Token)
			if err != nil {
				return err
			}
			ctx.SendAfterWithCancellationToken(delay, token, msg)
		} else {
			ctx.SendAfter(delay, msg)
		}
	case "cancel":
		token, err := statefun.NewCancellationToken(*cmd.Token)
		if err != nil {
			return err
		}
		ctx.CancelDelayedMessage(token)
	case "send":
		k, err := kindNamed(cmd.Kind)
		if err != nil {
			return err
		}
		v, err := k.fromJSON(cmd.Value)
		if err != nil {
			return err
		}
		target := statefun.Address{FunctionType: statefun.TypeNameFrom(cmd.To), Id: cmd.ID}
		ctx.Send(statefun.MessageBuilder{Target: target, Value: v, ValueType: k.typ})
	default:
		return fmt.Errorf("unknown op %q", cmd.Op)
	}
	report(ctx, out)
	return nil
}

func conformance(ctx statefun.Context, message statefun.Message) error {
	if message.Is(commandType) {
		var cmd command
		if err := message.As(commandType, &cmd); err != nil {
			return err
		}
		return onCommand(ctx, cmd)
	}
	if message.IsString() {
		text := message.AsString()
		if tag, ok := strings.CutPrefix(text, "fired:"); ok {
			report(ctx, map[string]interface{}{"op": "fired", "tag": tag})
			return nil
		}
		if kindName, ok := strings.CutPrefix(text, "ack:"); ok {
			report(ctx, map[string]interface{}{"op": "ack", "kind": kindName, "from": addressText(ctx.Caller())})
			return nil
		}
	}
	for _, k := range kinds {
		if !message.Is(k.typ) {
			continue
		}
		value, err := k.read(func(receiver interface{}) error { return message.As(k.typ, receiver) })
		if err != nil {
			return err
		}
		report(ctx, map[string]interface{}{"op": "recv", "kind": k.name, "value": value, "from": addressText(ctx.Caller())})
		if caller := ctx.Caller(); caller != nil {
			ctx.Send(statefun.MessageBuilder{Target: *caller, Value: "ack:" + k.name})
		}
		return nil
	}
	return errors.New("unexpected message type " + message.ValueTypeName().String())
}

type login struct {
	Name string `json:"name"`
}

type visit struct {
	Name   string `json:"name"`
	Visits int32  `json:"visits"`
}

func person(ctx statefun.Context, message statefun.Message) error {
	var l login
	if err := message.As(loginType, &l); err != nil {
		return err
	}
	var count int32
	ctx.Storage().Get(seen, &count)
	count++
	ctx.Storage().Set(seen, count)
	ctx.Send(statefun.MessageBuilder{
		Target:    statefun.Address{FunctionType: statefun.TypeNameFrom(ns + "/greeter"), Id: ctx.Self().Id},
		Value:     visit{Name: l.Name, Visits: count},
		ValueType: visitType,
	})
	return nil
}

func greeter(ctx statefun.Context, message statefun.Message) error {
	var v visit
	if err := message.As(visitType, &v); err != nil {
		return err
	}
	greeting := fmt.Sprintf("Hello %s! Visit #%d.", v.Name, v.Visits)
	if v.Visits == 1 {
		greeting = fmt.Sprintf("Hello %s! Welcome.", v.Name)
	}
	ctx.SendEgress(statefun.KafkaEgressBuilder{Target: outEgress, Topic: greetingsTopic, Key: v.Name, Value: greeting})
	return nil
}

func main() {
	states := []statefun.ValueSpec{ttlWrite, ttlCall}
	for _, k := range kinds {
		states = append(states, k.state)
	}
	builder := statefun.StatefulFunctionsBuilder()
	specs := []statefun.StatefulFunctionSpec{
		{FunctionType: statefun.TypeNameFrom(ns + "/conformance"), States: states, Function: statefun.StatefulFunctionPointer(conformance)},
		{FunctionType: statefun.TypeNameFrom(ns + "/person"), States: []statefun.ValueSpec{seen}, Function: statefun.StatefulFunctionPointer(person)},
		{FunctionType: statefun.TypeNameFrom(ns + "/greeter"), Function: statefun.StatefulFunctionPointer(greeter)},
	}
	for _, spec := range specs {
		if err := builder.WithSpec(spec); err != nil {
			log.Fatalf("registering %s: %v", spec.FunctionType, err)
		}
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	http.Handle("/statefun", builder.AsHandler())
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}

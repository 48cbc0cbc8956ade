// NATS credentials made with NATS's own libraries (nkeys, jwt/v2), for levee's NATS auth tests:
//
//	natskeys nkey DIR    a user nkey: DIR/nkey.conf (a server config allowing only that key) and
//	                     DIR/user.nk (its seed, as `nk -gen user` writes it)
//	natskeys creds DIR   an operator, a system account and a JetStream-enabled account JOBS with one
//	                     user: DIR/operator.conf (operator mode, the accounts preloaded in a memory
//	                     resolver) and DIR/user.creds (the user's JWT and seed, as `nsc` writes them)
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

func must[T any](value T, err error) T {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	return value
}

func write(dir, name, text string) {
	must(0, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600))
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: natskeys nkey|creds DIR")
		os.Exit(2)
	}
	dir := os.Args[2]
	switch os.Args[1] {
	case "nkey":
		user := must(nkeys.CreateUser())
		public := must(user.PublicKey())
		write(dir, "nkey.conf", fmt.Sprintf("authorization {\n  users = [{nkey: %s}]\n}\n", public))
		write(dir, "user.nk", string(must(user.Seed()))+"\n")
	case "creds":
		operator := must(nkeys.CreateOperator())
		system := must(nkeys.CreateAccount())
		account := must(nkeys.CreateAccount())
		user := must(nkeys.CreateUser())
		systemPublic := must(system.PublicKey())
		accountPublic := must(account.PublicKey())

		operatorClaims := jwt.NewOperatorClaims(must(operator.PublicKey()))
		operatorClaims.Name = "levee-test"
		operatorClaims.SystemAccount = systemPublic
		systemClaims := jwt.NewAccountClaims(systemPublic)
		systemClaims.Name = "SYS"
		accountClaims := jwt.NewAccountClaims(accountPublic)
		accountClaims.Name = "JOBS"
		accountClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{
			MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit,
		}
		userClaims := jwt.NewUserClaims(must(user.PublicKey()))
		userClaims.Name = "levee"

		config := fmt.Sprintf(
			"operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: %s\n  %s: %s\n}\n",
			must(operatorClaims.Encode(operator)), systemPublic,
			systemPublic, must(systemClaims.Encode(operator)),
			accountPublic, must(accountClaims.Encode(operator)),
		)
		write(dir, "operator.conf", config)
		creds := must(jwt.FormatUserConfig(must(userClaims.Encode(account)), must(user.Seed())))
		write(dir, "user.creds", string(creds))
	default:
		fmt.Fprintln(os.Stderr, "usage: natskeys nkey|creds DIR")
		os.Exit(2)
	}
}

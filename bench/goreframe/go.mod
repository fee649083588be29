module clawproxy.bench/goreframe

go 1.19

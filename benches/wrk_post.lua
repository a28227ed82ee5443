-- wrk script for the slot-efficiency benchmark: POST the JSON body in $WRK_BODY (the same
-- body batchflow sends, "stream": false included) to the URL given on the command line.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
